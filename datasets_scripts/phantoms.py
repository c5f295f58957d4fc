"""Procedural chest CT phantoms with lung tumours, a radiology report that describes them, and labels that
depend on what is visible: the synthetic cohort behind `SyntheticLungCT`, the demo and many tests.

Anatomy (int16 HU, array axes (z, y, x) in LPS: z grows towards the head, y towards the back, x towards the
patient's left): air, a body with subcutaneous fat and muscle, two lungs near -850 HU with branching vessels and
airways, trachea and main bronchi, mediastinal fat, heart, spine with discs and spinal canal, ribs, and the
upper abdomen under the diaphragm. Findings: a primary nodule or mass (size, lobe, location including
juxtapleural and juxtamediastinal, smooth/lobulated/spiculated margin, solid/part-solid/ground-glass density),
further nodules, enlarged lymph nodes, a pleural effusion or a lytic vertebral metastasis. Histology, EGFR,
TNM stage and survival are drawn from distributions that depend on those findings, so a model can learn them.

Everything is vectorised numpy: 2D in-plane masks broadcast along z, small local boxes for tubes and lesions.
"""

import dataclasses
import math

import numpy as np


HISTOLOGY_CLASSES = ("adenocarcinoma", "squamous cell carcinoma", "small cell carcinoma", "large cell carcinoma")
EGFR_CLASSES = ("wildtype", "mutant")
T_STAGE_CLASSES = ("T1", "T2", "T3", "T4")
N_STAGE_CLASSES = ("N0", "N1", "N2", "N3")
M_STAGE_CLASSES = ("M0", "M1a", "M1b")
OVERALL_STAGE_CLASSES = ("I", "II", "III", "IV")
LOCATION_CLASSES = ("peripheral", "juxtapleural", "central", "mediastinal")
MARGIN_CLASSES = ("smooth", "lobulated", "spiculated")
DENSITY_CLASSES = ("solid", "part-solid", "ground-glass")
LOBE_CLASSES = ("RUL", "RML", "RLL", "LUL", "LLL")
SURVIVAL_WEIBULL_SHAPE = 1.5  # shape of the survival-time distribution (1 would be exponential)
LOBE_NAMES = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}

REFERENCE_FIELD_OF_VIEW_MM = 358.4  # in-plane field of view of the default (256 x 1.4 mm) grid
REFERENCE_HEIGHT_MM = 320.0  # craniocaudal field of view of the default (128 x 2.5 mm) grid

HU_AIR = -1000
HU_LUNG = -850
HU_FAT = -95
HU_SOFT_TISSUE = 40
HU_BLOOD = 42
HU_FLUID = 8
HU_LIVER = 58
HU_CANCELLOUS_BONE = 260
HU_CORTICAL_BONE = 750
HU_RIB = 620
HU_DISC = 85
HU_SOLID_TUMOUR = 38
HU_GROUND_GLASS = -560


@dataclasses.dataclass
class ChestPhantom:
    """One synthetic chest CT with its findings, report and labels.

    `hu` is int16 (z, y, x) LPS; `spacing` (z, y, x) mm; `origin` (x, y, z) LPS mm of voxel (0, 0, 0);
    `lesion_mask` marks every tumour voxel (primary and further nodules); `lung_mask` the true lungs;
    `findings` one dict per finding; `labels` histology, egfr, t/n/m stage, stage, survival_days, event.
    """

    hu: np.ndarray
    spacing: tuple
    origin: tuple
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    findings: list
    report: str
    labels: dict
    seed: int


class _Geometry:
    """Physical coordinates of the grid and the analytic anatomy laid out on it."""

    def __init__(self, shape, spacing, rng):
        self.shape = tuple(int(size) for size in shape)
        self.spacing = tuple(float(value) for value in spacing)
        depth, height, width = self.shape
        spacing_z, spacing_y, spacing_x = self.spacing
        self.z_mm = (np.arange(depth) + 0.5) * spacing_z
        self.y_mm = (np.arange(height) + 0.5 - height / 2) * spacing_y
        self.x_mm = (np.arange(width) + 0.5 - width / 2) * spacing_x
        self.height_mm = depth * spacing_z
        self.z_fraction = self.z_mm / self.height_mm  # 0 = feet end, 1 = head end
        self.scale = min(width * spacing_x, height * spacing_y * 1.0) / REFERENCE_FIELD_OF_VIEW_MM
        # Body half-axes (mm) with a little patient-to-patient variation.
        self.body_half_width = 0.44 * width * spacing_x * rng.uniform(0.94, 1.02)
        self.body_half_depth = 0.30 * height * spacing_y * rng.uniform(0.92, 1.05)
        self.lung_apex = rng.uniform(0.9, 0.96)
        self.lung_base = {-1: rng.uniform(0.18, 0.24), 1: rng.uniform(0.14, 0.2)}  # right dome sits higher
        self.dome_height = rng.uniform(0.08, 0.13)
        self.carina_fraction = rng.uniform(0.64, 0.7)
        self.lung_center_x = 0.47 * self.body_half_width
        self.lung_center_y = 0.04 * self.body_half_depth
        self.lung_half_width = 0.33 * self.body_half_width * rng.uniform(0.95, 1.05)
        self.lung_half_depth = 0.8 * self.body_half_depth
        self.spine_center = (0.0, 0.66 * self.body_half_depth)
        self.spine_radius = 0.12 * self.body_half_width
        self.trachea_center = (0.0, 0.14 * self.body_half_depth)
        self.trachea_radius = max(9.0 * self.scale, 1.2 * spacing_x)
        self.hilum = {
            side: np.array(
                [
                    (self.carina_fraction - 0.07) * self.height_mm,
                    0.12 * self.body_half_depth,
                    side * 0.36 * self.body_half_width,
                ]
            )
            for side in (-1, 1)
        }
        yy, xx = np.meshgrid(self.y_mm, self.x_mm, indexing="ij")
        self.yy, self.xx = yy, xx
        self.body_radius = np.sqrt((xx / self.body_half_width) ** 2 + (yy / self.body_half_depth) ** 2)

    def lung_radius(self, side, y_mm, x_mm):
        """Super-elliptic in-plane radius of one lung (1 on its outline) at points (y, x) in mm."""
        dx = np.abs(x_mm - side * self.lung_center_x) / self.lung_half_width
        dy = np.abs(y_mm - self.lung_center_y) / self.lung_half_depth
        return (dx**2.6 + dy**2.6) ** (1 / 2.6)

    def lung_base_fraction(self, side, radius):
        """Height (fraction of the field) of the diaphragm dome under a lung at in-plane radius `radius`."""
        return self.lung_base[side] + self.dome_height * np.clip(1 - radius**2, 0, 1)

    def lung_profile(self, z_fraction):
        """In-plane scale of the lung cross-section along z: 1 in the middle, tapering to the apex."""
        return np.sqrt(np.clip((self.lung_apex - z_fraction) / 0.3, 0, 1))

    def lobe_of(self, side, z_mm, y_mm, x_mm):
        """Lobe names of points given in mm, from a simplified oblique and horizontal fissure."""
        radius = self.lung_radius(side, y_mm, x_mm)
        base = self.lung_base_fraction(side, radius)
        relative_height = (z_mm / self.height_mm - base) / np.maximum(self.lung_apex - base, 1e-6)
        anterior_posterior = (y_mm - self.lung_center_y) / self.lung_half_depth  # -1 front, +1 back
        lower = relative_height < 0.5 + 0.32 * anterior_posterior
        if side < 0:
            middle = ~lower & (relative_height < 0.6)
            return np.where(lower, "RLL", np.where(middle, "RML", "RUL"))
        return np.where(lower, "LLL", "LUL")


def _box_around(center_mm, half_size_mm, geometry):
    """Index slices and local mm coordinates (broadcastable) of the box around a point, clipped to the grid."""
    slices, coordinates = [], []
    axes = (geometry.z_mm, geometry.y_mm, geometry.x_mm)
    for axis, (center, half, positions, step) in enumerate(zip(center_mm, half_size_mm, axes, geometry.spacing)):
        start = int(np.searchsorted(positions, center - half - step))
        stop = int(np.searchsorted(positions, center + half + step))
        start, stop = max(start, 0), min(stop, len(positions))
        slices.append(slice(start, stop))
        shape = [1, 1, 1]
        shape[axis] = max(stop - start, 0)
        coordinates.append((positions[start:stop] - center).reshape(shape))
    return tuple(slices), coordinates


def _tube_mask(start_mm, end_mm, start_radius, end_radius, geometry):
    """Voxels within a tapered tube between two points: (slices of the box, boolean mask inside it)."""
    start_mm, end_mm = np.asarray(start_mm, float), np.asarray(end_mm, float)
    center = (start_mm + end_mm) / 2
    radius = max(start_radius, end_radius)
    half = np.abs(end_mm - start_mm) / 2 + radius
    slices, (dz, dy, dx) = _box_around(center, half, geometry)
    if any(s.stop <= s.start for s in slices):
        return slices, None
    direction = end_mm - start_mm
    length_squared = max(float(direction @ direction), 1e-9)
    # Coordinates relative to the tube start.
    pz, py, px = dz + (center[0] - start_mm[0]), dy + (center[1] - start_mm[1]), dx + (center[2] - start_mm[2])
    along = np.clip((pz * direction[0] + py * direction[1] + px * direction[2]) / length_squared, 0, 1)
    distance_squared = (
        (pz - along * direction[0]) ** 2 + (py - along * direction[1]) ** 2 + (px - along * direction[2]) ** 2
    )
    local_radius = start_radius + (end_radius - start_radius) * along
    return slices, distance_squared <= local_radius**2


def _grow_tree(root_mm, direction, length, radius, depth, rng, segments):
    """Append the segments of a randomly branching tree (start, end, start radius, end radius)."""
    direction = direction / np.linalg.norm(direction)
    end = root_mm + direction * length
    segments.append((root_mm, end, radius, radius * 0.78))
    if depth == 0:
        return
    for _ in range(2):
        bend = rng.normal(0, 0.55, size=3)
        child = direction + bend - (bend @ direction) * direction
        _grow_tree(end, child, length * rng.uniform(0.62, 0.8), radius * 0.72, depth - 1, rng, segments)


def _paint(volume, slices, mask, value, where=None):
    region = volume[slices]
    if where is not None:
        mask = mask & where[slices]
    region[mask] = value
    return mask


class _PhantomBuilder:
    def __init__(self, seed, shape, spacing, noise_std, primary_lesion):
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.geometry = _Geometry(shape, spacing, self.rng)
        self.noise_std = noise_std
        self.primary_overrides = dict(primary_lesion or {})
        self.findings = []

    # ---------------------------------------------------------------- anatomy
    def build_anatomy(self):
        geometry, rng = self.geometry, self.rng
        depth, height, width = geometry.shape
        z_fraction = geometry.z_fraction[:, None, None]
        volume = np.full(geometry.shape, HU_AIR, dtype=np.int16)

        # Body: slightly narrower at the neck end; subcutaneous fat, muscle, then the inner cavity.
        body_scale = (1.0 - 0.12 * np.clip((geometry.z_fraction - 0.93) / 0.07, 0, 1))[:, None, None]
        body_radius = geometry.body_radius[None]
        body = body_radius <= body_scale
        np.copyto(volume, np.int16(HU_FAT), where=body)
        muscle_outer = body_scale * rng.uniform(0.9, 0.95)
        np.copyto(volume, np.int16(HU_SOFT_TISSUE), where=body_radius <= muscle_outer)
        cavity = body_radius <= body_scale * 0.85
        np.copyto(volume, np.int16(HU_FAT), where=cavity)  # mediastinal fat; organs are painted over it

        # Upper abdomen under the diaphragm (liver on the right, soft tissue on the left).
        base_2d = {
            side: geometry.lung_base_fraction(side, geometry.lung_radius(side, geometry.yy, geometry.xx))
            for side in (-1, 1)
        }
        diaphragm = np.minimum(base_2d[-1], base_2d[1])
        abdomen = cavity & (z_fraction < diaphragm[None])
        np.copyto(volume, np.int16(HU_LIVER), where=abdomen)

        # Lungs: super-elliptic cross-sections tapering to the apex, domed bases, inside the rib cage.
        lung_mask = np.zeros(geometry.shape, dtype=bool)
        inside_ribs = geometry.body_radius <= 0.84
        spine_x, spine_y = geometry.spine_center
        away_from_spine = np.hypot(geometry.xx - spine_x, geometry.yy - spine_y) > geometry.spine_radius * 1.6
        profile = geometry.lung_profile(geometry.z_fraction)[:, None, None]
        for side in (-1, 1):
            radius = geometry.lung_radius(side, geometry.yy, geometry.xx)
            allowed = inside_ribs & away_from_spine & (side * geometry.xx > 0.1 * geometry.body_half_width)
            lung_mask |= (radius[None] <= profile) & (z_fraction >= base_2d[side][None]) & allowed[None]

        # Heart: an ellipsoid in the lower anterior mediastinum that indents the left lung.
        heart_center = np.array(
            [
                rng.uniform(0.3, 0.36) * geometry.height_mm,
                -0.3 * geometry.body_half_depth,
                0.12 * geometry.body_half_width,
            ]
        )
        heart_half = np.array(
            [0.17 * geometry.height_mm, 0.42 * geometry.body_half_depth, 0.36 * geometry.body_half_width]
        )
        slices, (dz, dy, dx) = _box_around(heart_center, heart_half, geometry)
        heart = (dz / heart_half[0]) ** 2 + (dy / heart_half[1]) ** 2 + (dx / heart_half[2]) ** 2 <= 1
        lung_mask[slices] &= ~heart
        volume[slices][heart & cavity[slices]] = HU_BLOOD

        # Descending aorta and oesophagus: tubes beside and in front of the spine.
        aorta_x, aorta_y = 0.16 * geometry.body_half_width, 0.42 * geometry.body_half_depth
        for tube_x, tube_y, tube_radius, value in (
            (aorta_x, aorta_y, 11 * geometry.scale, HU_BLOOD),
            (-0.03 * geometry.body_half_width, 0.36 * geometry.body_half_depth, 6 * geometry.scale, HU_SOFT_TISSUE),
        ):
            disc = np.hypot(geometry.xx - tube_x, geometry.yy - tube_y) <= max(tube_radius, geometry.spacing[2])
            rows, cols = np.nonzero(disc)
            span = slice(int(np.searchsorted(geometry.z_fraction, diaphragm.min())), depth)
            column = volume[span, rows, cols]
            column[:] = value
            volume[span, rows, cols] = column
            lung_mask[:, rows, cols] = False

        # Lung parenchyma is a little denser towards the back (dependent), as on supine scans.
        lung_hu = (HU_LUNG + 25 * np.clip(geometry.yy / geometry.body_half_depth, -1, 1)).astype(np.int16)
        np.copyto(volume, lung_hu[None], where=lung_mask)
        self.volume, self.lung_mask, self.cavity = volume, lung_mask, cavity
        self.heart = (heart_center, heart_half)
        self._paint_vessels_and_airways()
        self._paint_trachea()
        self._paint_spine()
        self._paint_ribs()
        # The lung mask is the lung parenchyma including its vessels and small airways (as lung segmentations are).

    def _paint_vessels_and_airways(self):
        geometry, rng = self.geometry, self.rng
        scale = geometry.scale
        for side in (-1, 1):
            hilum = geometry.hilum[side]
            vessel_segments, airway_segments = [], []
            # Vessels fan out from the hilum in every direction; airways follow the main ones.
            main_directions = [
                np.array(
                    [
                        np.sin(elevation),
                        np.cos(elevation) * np.sin(azimuth),
                        side * np.cos(elevation) * (0.3 + abs(np.cos(azimuth))),
                    ]
                )
                for elevation in (-1.25, -0.6, 0.0, 0.6, 1.2)
                for azimuth in (-1.2, -0.4, 0.4, 1.2)
            ]
            base_length = 0.5 * geometry.lung_half_width
            # Coarse grids cannot show the finest branches: one generation less keeps small phantoms fast.
            depth = 3 if min(geometry.spacing[1:]) <= 2.0 else 2
            for direction in main_directions:
                jitter = direction + rng.normal(0, 0.2, size=3)
                length = base_length * (1 + 0.9 * abs(direction[0])) * rng.uniform(0.8, 1.2)
                _grow_tree(hilum, jitter, length, 3.4 * scale, depth, rng, vessel_segments)
            for direction in main_directions[1::3]:
                jitter = direction + rng.normal(0, 0.15, size=3)
                _grow_tree(hilum, jitter, base_length * rng.uniform(0.7, 0.9), 3.0 * scale, 2, rng, airway_segments)
            minimum_radius = 0.45 * min(geometry.spacing[1:])
            for start, end, start_radius, end_radius in vessel_segments:
                slices, tube = _tube_mask(
                    start, end, max(start_radius, minimum_radius), max(end_radius, minimum_radius), geometry
                )
                if tube is not None:
                    _paint(self.volume, slices, tube, HU_BLOOD, where=self.lung_mask)
            for start, end, start_radius, end_radius in airway_segments:
                wall_start, wall_end = max(start_radius, minimum_radius * 2), max(end_radius, minimum_radius * 2)
                slices, wall = _tube_mask(start, end, wall_start, wall_end, geometry)
                if wall is None:
                    continue
                _paint(self.volume, slices, wall, -80, where=self.lung_mask)
                slices, lumen = _tube_mask(start, end, wall_start * 0.65, wall_end * 0.65, geometry)
                _paint(self.volume, slices, lumen, -990, where=self.lung_mask)

    def _paint_trachea(self):
        geometry = self.geometry
        carina = np.array([geometry.carina_fraction * geometry.height_mm, geometry.trachea_center[1], 0.0])
        top = np.array([geometry.height_mm + 10.0, geometry.trachea_center[1] - 0.05 * geometry.body_half_depth, 0.0])
        radius = geometry.trachea_radius
        tubes = [(top, carina, radius, radius)]
        for side in (-1, 1):
            tubes.append((carina, geometry.hilum[side], radius * 0.75, radius * 0.55))
        walls = []
        for start, end, start_radius, end_radius in tubes:
            slices, wall = _tube_mask(
                start, end, start_radius + 1.8 * geometry.scale + 0.5, end_radius + 1.8 * geometry.scale + 0.5, geometry
            )
            if wall is not None:
                walls.append((slices, wall))
                _paint(self.volume, slices, wall, HU_SOFT_TISSUE + 30)
        for start, end, start_radius, end_radius in tubes:
            slices, lumen = _tube_mask(start, end, start_radius, end_radius, geometry)
            if lumen is not None:
                _paint(self.volume, slices, lumen, HU_AIR)
        for slices, wall in walls:
            self.lung_mask[slices] &= ~wall
        self.carina = carina

    def _paint_spine(self):
        geometry = self.geometry
        spine_x, spine_y = geometry.spine_center
        radius = geometry.spine_radius
        distance = np.hypot(geometry.xx - spine_x, geometry.yy - spine_y)
        canal_y = spine_y + 1.45 * radius
        canal_distance = np.hypot(geometry.xx - spine_x, geometry.yy - canal_y)
        body_pixels = np.nonzero(distance <= radius)
        rim_pixels = distance[body_pixels] >= 0.82 * radius
        arch_pixels = np.nonzero(
            (canal_distance <= 0.85 * radius) & (distance > radius) & (geometry.body_radius <= 0.97)
        )
        canal_pixels = canal_distance[arch_pixels] <= 0.45 * radius
        vertebra_height = 26.0 * max(geometry.scale, 0.3)
        disc = ((geometry.z_mm / vertebra_height) % 1.0) < 0.2  # (depth,)
        body_values = np.where(rim_pixels, HU_CORTICAL_BONE, HU_CANCELLOUS_BONE)[None, :]
        body_values = np.where(disc[:, None], HU_DISC, body_values).astype(np.int16)
        self.volume[:, body_pixels[0], body_pixels[1]] = body_values
        arch_values = np.where(canal_pixels, HU_FLUID, HU_CORTICAL_BONE - 150)[None, :]
        arch_values = np.where(disc[:, None] & ~canal_pixels[None, :], HU_SOFT_TISSUE, arch_values).astype(np.int16)
        self.volume[:, arch_pixels[0], arch_pixels[1]] = arch_values
        self.lung_mask[:, body_pixels[0], body_pixels[1]] = False
        self.vertebra_height = vertebra_height

    def _paint_ribs(self):
        geometry = self.geometry
        band = (geometry.body_radius >= 0.855) & (geometry.body_radius <= 0.9)
        # Angle from the back of the patient (0 at the spine, pi at the sternum).
        angle_from_back = np.arccos(np.clip(geometry.yy / np.maximum(np.hypot(geometry.xx, geometry.yy), 1e-6), -1, 1))
        band &= angle_from_back > 0.12
        rows, cols = np.nonzero(band)
        angle = angle_from_back[rows, cols]
        period = 24.0 * max(geometry.scale, 0.3)
        thickness = 9.0 * max(geometry.scale, 0.3)
        descent = 0.35 * period * 2 * angle / math.pi  # ribs run down towards the front
        phase = ((geometry.z_mm[:, None] + descent[None, :]) / period) % 1.0
        in_chest = (geometry.z_fraction > min(self.geometry.lung_base.values()) - 0.05) & (geometry.z_fraction < 0.97)
        rib = (phase < thickness / period) & in_chest[:, None]
        cartilage = angle > 0.86 * math.pi
        values = self.volume[:, rows, cols]
        values = np.where(rib, np.where(cartilage, 150, HU_RIB)[None, :], values).astype(np.int16)
        self.volume[:, rows, cols] = values

    # ---------------------------------------------------------------- findings
    def _sample_points_in_lung(self, side, count):
        """Random voxel positions (mm, (z, y, x)) inside one lung."""
        geometry = self.geometry
        depth, height, width = geometry.shape
        half = width // 2
        x_range = (0, half) if side < 0 else (half, width)
        for _ in range(20):
            index = np.stack(
                [
                    self.rng.integers(0, depth, count * 4),
                    self.rng.integers(0, height, count * 4),
                    self.rng.integers(*x_range, count * 4),
                ],
                axis=1,
            )
            inside = self.lung_mask[index[:, 0], index[:, 1], index[:, 2]]
            if inside.any():
                index = index[inside][:count]
                return np.stack(
                    [geometry.z_mm[index[:, 0]], geometry.y_mm[index[:, 1]], geometry.x_mm[index[:, 2]]], axis=1
                )
        return np.zeros((0, 3))

    def _lung_at(self, points_mm):
        geometry = self.geometry
        index = [
            np.clip(
                np.round(
                    points_mm[..., axis] / geometry.spacing[axis]
                    - (0.5 if axis == 0 else 0.5 - geometry.shape[axis] / 2)
                ),
                0,
                geometry.shape[axis] - 1,
            ).astype(int)
            for axis in range(3)
        ]
        return self.lung_mask[index[0], index[1], index[2]]

    def _place_lesion(self, side, lobe, location, radius):
        """A centre (mm) in `lobe` whose neighbourhood matches `location`; None when no place fits."""
        geometry = self.geometry
        directions = _sphere_directions()
        for attempt in range(6):
            candidates = self._sample_points_in_lung(side, 400)
            if len(candidates) == 0:
                return None
            lobes = geometry.lobe_of(side, candidates[:, 0], candidates[:, 1], candidates[:, 2])
            candidates = candidates[lobes == lobe] if lobe is not None else candidates
            if len(candidates) == 0:
                continue
            shell = candidates[:, None, :] + directions[None] * (radius * 1.05 + 1.5)
            inside = self._lung_at(shell)
            outside_fraction = 1 - inside.mean(axis=1)
            outside_medial = (~inside & (np.abs(shell[..., 2]) < 0.3 * geometry.body_half_width)).sum(axis=1)
            outside_lateral = (~inside & (np.abs(shell[..., 2]) >= 0.3 * geometry.body_half_width)).sum(axis=1)
            below = (~inside & (shell[..., 0] < candidates[:, None, 0] - 0.5 * radius)).sum(axis=1)
            hilum_distance = np.linalg.norm(candidates - geometry.hilum[side], axis=1)
            if location == "peripheral":
                good = (outside_fraction == 0) & (hilum_distance > 0.55 * geometry.lung_half_width + radius)
            elif location == "central":
                good = (outside_fraction == 0) & (hilum_distance < 0.45 * geometry.lung_half_width + radius)
            elif location == "juxtapleural":
                good = (
                    (outside_fraction > 0.08)
                    & (outside_fraction < 0.45)
                    & (outside_medial == 0)
                    & (outside_lateral > 0)
                )
                good &= below <= outside_lateral // 2
            else:  # mediastinal
                good = (
                    (outside_fraction > 0.08)
                    & (outside_fraction < 0.45)
                    & (outside_medial > 0)
                    & (outside_lateral == 0)
                )
            if good.any():
                choice = self.rng.choice(np.nonzero(good)[0])
                center = candidates[choice]
                if location in ("juxtapleural", "mediastinal"):
                    center = self._push_to_boundary(center, radius, directions)
                return center
            radius *= 0.9
        return None

    def _push_to_boundary(self, center, radius, directions):
        """Move a centre towards the nearest lung boundary so the lesion abuts the pleura."""
        shell = center[None] + directions * (radius * 1.05 + 1.5)
        outside = ~self._lung_at(shell)
        if not outside.any():
            return center
        outward = directions[outside].mean(axis=0)
        outward /= max(np.linalg.norm(outward), 1e-6)
        return center + outward * 0.25 * radius

    def _render_lesion(self, center, radius, margin, density):
        """Paint a tumour; returns its boolean mask over the whole grid."""
        geometry, rng = self.geometry, self.rng
        reach = radius * (2.1 if margin == "spiculated" else 1.35) + 2
        slices, (dz, dy, dx) = _box_around(center, (reach, reach, reach), geometry)
        distance = np.sqrt(dz**2 + dy**2 + dx**2)
        safe = np.maximum(distance, 1e-6)
        polar = np.arccos(np.clip(dz / safe, -1, 1))
        azimuth = np.arctan2(dy, dx)
        if margin == "smooth":
            amplitude = (0.03, 0.02)
        elif margin == "lobulated":
            amplitude = (0.16, 0.12)
        else:
            amplitude = (0.08, 0.06)
        boundary = radius * (
            1
            + amplitude[0] * np.cos(3 * azimuth + rng.uniform(0, 6.3)) * np.sin(polar)
            + amplitude[1] * np.cos(2 * polar + rng.uniform(0, 6.3))
            + amplitude[1] * np.cos(5 * azimuth + rng.uniform(0, 6.3)) * np.sin(polar) ** 2
        )
        mask = distance <= boundary
        full_mask = np.zeros(geometry.shape, dtype=bool)
        full_mask[slices] = mask
        if margin == "spiculated":
            for direction in _random_directions(rng, int(rng.integers(8, 15))):
                start = center + direction * radius * 0.7
                end = center + direction * radius * rng.uniform(1.5, 2.0)
                tube_slices, tube = _tube_mask(
                    start,
                    end,
                    max(1.0 * geometry.scale, 0.45 * geometry.spacing[2]),
                    0.3 * geometry.spacing[2],
                    geometry,
                )
                if tube is not None:
                    full_mask[tube_slices] |= tube & self.lung_mask[tube_slices]
        region = self.volume[slices]
        lesion = full_mask[slices] & (region < 200)  # never paint over bone
        if density == "solid":
            region[lesion] = HU_SOLID_TUMOUR
        else:
            region[lesion] = np.maximum(region[lesion], HU_GROUND_GLASS)
            if density == "part-solid":
                core = lesion & (distance <= radius * rng.uniform(0.35, 0.55))
                region[core] = HU_SOLID_TUMOUR
        full_mask[slices] = lesion
        return full_mask

    def _lesion_finding(self, role, side, lobe, location, diameter_mm, margin, density):
        radius = diameter_mm / 2
        center = self._place_lesion(side, lobe, location, radius)
        if center is None and location != "peripheral":
            location = "peripheral"
            center = self._place_lesion(side, lobe, location, radius)
        if center is None:
            center = self._place_lesion(side, None, "peripheral", radius * 0.6)
            if center is None:
                return None
            radius *= 0.6
        mask = self._render_lesion(center, radius, margin, density)
        if not mask.any():
            return None
        lobe = str(self.geometry.lobe_of(side, center[0], center[1], center[2]))
        z_index, y_index, x_index = np.nonzero(mask)
        voxel_center = (float(z_index.mean()), float(y_index.mean()), float(x_index.mean()))
        diameter = round(2 * radius)
        return {
            "kind": "mass" if diameter > 30 else "nodule",
            "role": role,
            "side": "right" if side < 0 else "left",
            "lobe": lobe,
            "location": location,
            "diameter_mm": int(diameter),
            "margin": margin,
            "density": density,
            "center_voxel": voxel_center,
            "bbox": [
                [int(z_index.min()), int(z_index.max()) + 1],
                [int(y_index.min()), int(y_index.max()) + 1],
                [int(x_index.min()), int(x_index.max()) + 1],
            ],
            "mask": mask,
        }

    def _maximum_diameter(self):
        geometry = self.geometry
        return max(4.0, min(2 * 0.75 * geometry.lung_half_width, 0.3 * geometry.height_mm))

    def build_findings(self):
        rng, overrides = self.rng, self.primary_overrides
        lobe = overrides.get("lobe") or str(rng.choice(LOBE_CLASSES, p=[0.26, 0.07, 0.22, 0.26, 0.19]))
        side = -1 if lobe.startswith("R") else 1
        location = overrides.get("location") or str(rng.choice(LOCATION_CLASSES, p=[0.4, 0.25, 0.2, 0.15]))
        if "diameter_mm" in overrides:
            diameter = float(overrides["diameter_mm"])
        else:
            diameter = float(np.clip(np.exp(rng.normal(math.log(22), 0.55)), 6, 80))
        diameter = min(diameter, self._maximum_diameter())
        if "density" in overrides:
            density = overrides["density"]
        else:
            ground_glass_weight = 0.3 if diameter <= 30 else 0.05
            density = str(
                rng.choice(DENSITY_CLASSES, p=[1 - 2 * ground_glass_weight, ground_glass_weight, ground_glass_weight])
            )
        margin = overrides.get("margin") or str(rng.choice(MARGIN_CLASSES, p=[0.3, 0.3, 0.4]))
        self.lesion_mask = np.zeros(self.geometry.shape, dtype=bool)
        primary = self._lesion_finding("primary", side, lobe, location, diameter, margin, density)
        if primary is None:
            raise RuntimeError("the phantom's lungs are too small for a tumour; use a larger field of view")
        self._add_lesion(primary)

        # Further nodules: same lobe (T3), another ipsilateral lobe (T4) or the other lung (M1a).
        count = int(overrides.get("further_nodules", rng.choice([0, 1, 2], p=[0.72, 0.2, 0.08])))
        for _ in range(count):
            where = str(rng.choice(["same lobe", "ipsilateral", "contralateral"], p=[0.4, 0.3, 0.3]))
            if where == "same lobe":
                nodule_side, nodule_lobe = side, primary["lobe"]
            elif where == "ipsilateral":
                options = [name for name in LOBE_CLASSES if name[0] == primary["lobe"][0] and name != primary["lobe"]]
                nodule_side, nodule_lobe = side, str(rng.choice(options))
            else:
                nodule_side = -side
                nodule_lobe = str(rng.choice([name for name in LOBE_CLASSES if name[0] != primary["lobe"][0]]))
            nodule = self._lesion_finding(
                "further nodule",
                nodule_side,
                nodule_lobe,
                "peripheral",
                min(float(rng.uniform(4, 11)), self._maximum_diameter()),
                str(rng.choice(["smooth", "lobulated"])),
                str(rng.choice(["solid", "ground-glass"], p=[0.7, 0.3])),
            )
            if nodule is not None:
                self._add_lesion(nodule)
        self.primary, self.side = primary, side

    def _add_lesion(self, finding):
        mask = finding.pop("mask")
        self.lesion_mask |= mask
        self.findings.append(finding)

    def draw_labels_and_spread(self):
        """Draw histology and EGFR from the primary's look, N/M from size and location, then paint the spread."""
        rng, primary = self.rng, self.primary
        diameter = primary["diameter_mm"]
        central = primary["location"] in ("central", "mediastinal")
        outer = primary["location"] in ("peripheral", "juxtapleural")
        ground_glass = primary["density"] != "solid"
        logits = np.array(
            [
                0.9 + 1.2 * outer + 1.8 * ground_glass,
                0.2 + 1.4 * central + 0.5 * (not ground_glass) + 0.4 * (diameter > 30),
                -1.4 + 1.6 * central + 0.6 * (diameter > 30) - 3.0 * ground_glass,
                -1.3 + 0.9 * (diameter > 40) + 0.3 * outer - 2.0 * ground_glass,
            ]
        )
        histology = str(rng.choice(HISTOLOGY_CLASSES, p=_softmax(logits)))
        if histology == "adenocarcinoma":
            egfr_probability = 0.6 if ground_glass else 0.28
        else:
            egfr_probability = 0.04
        egfr = "mutant" if rng.random() < egfr_probability else "wildtype"

        # Lymph node spread depends on size, central location and histology.
        node_logit = (
            -2.0
            + 0.05 * (diameter - 20)
            + 1.1 * central
            + 1.0 * (histology == "small cell carcinoma")
            - 1.5 * (primary["density"] == "ground-glass")
        )
        node_probability = 1 / (1 + math.exp(-node_logit))
        if rng.random() < node_probability:
            n_stage = str(rng.choice(["N1", "N2", "N3"], p=[0.45, 0.4, 0.15]))
        else:
            n_stage = "N0"
        metastasis_logit = (
            -3.0
            + 0.9 * (n_stage != "N0")
            + 0.8 * (n_stage == "N3")
            + 0.03 * (diameter - 20)
            + 0.9 * (histology == "small cell carcinoma")
        )
        has_contralateral = any(
            f.get("role") == "further nodule" and f["side"] != primary["side"] for f in self.findings
        )
        m_stage = "M0"
        if has_contralateral:
            m_stage = "M1a"
        if rng.random() < 1 / (1 + math.exp(-metastasis_logit)):
            m_stage = str(rng.choice(["M1a", "M1b"], p=[0.5, 0.5]))
        self._paint_lymph_nodes(n_stage)
        if m_stage == "M1a" and not has_contralateral:
            self._paint_effusion()
        elif m_stage == "M1b":
            self._paint_bone_metastasis()

        t_stage = _t_stage(primary, self.findings)
        stage = _overall_stage(t_stage, n_stage, m_stage, diameter)
        # Proportional hazards: the stage sets the median, a larger primary shortens it within a stage, small cell
        # halves it. Weibull shape 1.5 (hazard rising with time) keeps the spread narrower than an exponential, so the
        # visible findings carry most of the prognosis (the best possible C-index from the findings is about 0.82).
        median_days = {"I": 2600, "II": 1400, "III": 620, "IV": 240}[stage] * math.exp(-0.012 * (diameter - 25))
        if histology == "small cell carcinoma":
            median_days *= 0.6
        survival_time = median_days / math.log(2) ** (1 / SURVIVAL_WEIBULL_SHAPE) * rng.weibull(SURVIVAL_WEIBULL_SHAPE)
        follow_up = rng.uniform(365, 2200)
        self.labels = {
            "histology": histology,
            "egfr": egfr,
            "t_stage": t_stage,
            "n_stage": n_stage,
            "m_stage": m_stage,
            "stage": stage,
            "survival_days": int(max(1, round(min(survival_time, follow_up)))),
            "event": int(survival_time <= follow_up),
        }

    def _paint_lymph_nodes(self, n_stage):
        geometry, rng = self.geometry, self.rng
        if n_stage == "N0":
            return
        side = self.side
        carina = self.carina
        places = []
        if n_stage in ("N1", "N2", "N3"):
            places.append(("hilar", side, geometry.hilum[side] + np.array([-4.0, 3.0, side * 4.0]) * geometry.scale))
        if n_stage in ("N2", "N3"):
            places.append(
                (
                    "mediastinal",
                    side,
                    carina
                    + np.array([12.0, -6.0, side * 1.2 * geometry.trachea_radius + 6])
                    * np.array([geometry.scale, geometry.scale, 1.0]),
                )
            )
        if n_stage == "N3":
            places.append(
                (
                    "mediastinal",
                    -side,
                    carina
                    + np.array([16.0, -8.0, -side * 1.2 * geometry.trachea_radius - 6])
                    * np.array([geometry.scale, geometry.scale, 1.0]),
                )
            )
        for station, node_side, center in places:
            short_axis = float(np.clip(rng.uniform(12, 22) * geometry.scale, 2 * geometry.spacing[2], 40))
            half = np.array([short_axis * 0.7, short_axis * 0.5, short_axis * 0.5])
            slices, (dz, dy, dx) = _box_around(center, half, geometry)
            node = (dz / half[0]) ** 2 + (dy / half[1]) ** 2 + (dx / half[2]) ** 2 <= 1
            region = self.volume[slices]
            node &= region < 200
            region[node] = HU_SOFT_TISSUE
            self.lung_mask[slices] &= ~node
            self.findings.append(
                {
                    "kind": "lymph node",
                    "role": "nodal spread",
                    "side": "right" if node_side < 0 else "left",
                    "station": station,
                    "short_axis_mm": int(round(short_axis)),
                }
            )

    def _paint_effusion(self):
        geometry = self.geometry
        side = self.side
        level = geometry.lung_center_y + 0.45 * geometry.lung_half_depth
        height_limit = max(geometry.lung_base.values()) + geometry.dome_height + 0.12
        in_side = (side * geometry.xx > 0)[None]
        dependent = (geometry.yy > level)[None] & (geometry.z_fraction < height_limit)[:, None, None]
        effusion = self.lung_mask & dependent & in_side & ~self.lesion_mask
        self.volume[effusion] = HU_FLUID
        self.lung_mask &= ~effusion
        self.findings.append(
            {"kind": "pleural effusion", "role": "metastatic spread", "side": "right" if side < 0 else "left"}
        )

    def _paint_bone_metastasis(self):
        geometry, rng = self.geometry, self.rng
        spine_x, spine_y = geometry.spine_center
        z_center = rng.uniform(0.35, 0.8) * geometry.height_mm
        radius = 0.55 * geometry.spine_radius
        center = np.array(
            [z_center, spine_y - 0.2 * geometry.spine_radius, spine_x + rng.uniform(-0.2, 0.2) * geometry.spine_radius]
        )
        slices, (dz, dy, dx) = _box_around(center, (radius, radius, radius), geometry)
        lesion = dz**2 + dy**2 + dx**2 <= radius**2
        region = self.volume[slices]
        lesion &= region > 150
        region[lesion] = 30
        self.findings.append({"kind": "bone lesion", "role": "metastatic spread", "site": "thoracic vertebral body"})

    def add_noise(self):
        if self.noise_std <= 0:
            return
        # Sum of a uniform integer field and its mirror image: near-Gaussian, one cheap int8 draw.
        half_width = min(127, max(1, int(round(self.noise_std * math.sqrt(1.5)))))
        noise = self.rng.integers(-half_width, half_width + 1, size=self.geometry.shape, dtype=np.int8)
        self.volume += noise
        self.volume += noise[::-1, ::-1]
        np.clip(self.volume, -1024, 3071, out=self.volume)


def _sphere_directions():
    """26 unit vectors to the neighbours of a voxel: probes around a candidate lesion centre."""
    offsets = np.array(
        [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)], dtype=float
    )
    return offsets / np.linalg.norm(offsets, axis=1, keepdims=True)


def _random_directions(rng, count):
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _softmax(logits):
    exponentials = np.exp(logits - logits.max())
    return exponentials / exponentials.sum()


def _t_stage(primary, findings):
    """T category (AJCC 8, simplified to what the phantom shows): size, then further nodules and invasion."""
    diameter = primary["diameter_mm"]
    t_stage = 1 if diameter <= 30 else 2 if diameter <= 50 else 3 if diameter <= 70 else 4
    for finding in findings:
        if finding.get("role") != "further nodule" or finding["side"] != primary["side"]:
            continue
        t_stage = max(t_stage, 3 if finding["lobe"] == primary["lobe"] else 4)
    if primary["location"] == "mediastinal" and diameter > 30:
        t_stage = 4  # a mass against the mediastinum is read as invading it
    return f"T{t_stage}"


def _overall_stage(t_stage, n_stage, m_stage, diameter):
    """Overall stage group I-IV from TNM (AJCC 8 groups collapsed to their roman numeral)."""
    if m_stage != "M0":
        return "IV"
    if n_stage in ("N2", "N3") or t_stage == "T4" or (t_stage == "T3" and n_stage == "N1"):
        return "III"
    if n_stage == "N1" or t_stage == "T3" or (t_stage == "T2" and diameter > 40):
        return "II"
    return "I"


def _choose(rng, options):
    return options[int(rng.integers(len(options)))]


def write_report(findings, rng):
    """A templated radiology report that states exactly the findings painted into the phantom."""
    lines = [
        _choose(rng, ["CT CHEST WITHOUT CONTRAST.", "CT OF THE CHEST, NON-CONTRAST.", "CHEST CT."]),
        "",
        "FINDINGS:",
    ]
    lesions = [finding for finding in findings if finding["kind"] in ("nodule", "mass")]
    primary = lesions[0]
    location_phrase = {
        "peripheral": _choose(rng, [" in the lung periphery", " peripherally", ""]),
        "juxtapleural": _choose(
            rng, [", abutting the pleura", ", juxtapleural", ", in contact with the costal pleura"]
        ),
        "central": _choose(rng, [" in a perihilar location", ", centrally near the hilum"]),
        "mediastinal": _choose(rng, [", abutting the mediastinum", ", juxtamediastinal"]),
    }[primary["location"]]
    lines.append(
        f"{_choose(rng, ['There is a', 'A'])} {primary['diameter_mm']} mm {primary['margin']} {primary['density']} "
        f"{primary['kind']} in the {LOBE_NAMES[primary['lobe']]}{location_phrase}."
    )
    for nodule in lesions[1:]:
        lines.append(
            f"{_choose(rng, ['Additional', 'A further', 'Separate'])} {nodule['diameter_mm']} mm {nodule['margin']} "
            f"{nodule['density']} nodule in the {LOBE_NAMES[nodule['lobe']]}."
        )
    nodes = [finding for finding in findings if finding["kind"] == "lymph node"]
    if nodes:
        for node in nodes:
            lines.append(
                f"Enlarged {node['side']} {node['station']} lymph node measuring {node['short_axis_mm']} mm "
                "in short axis."
            )
    else:
        lines.append(
            _choose(rng, ["No mediastinal or hilar lymphadenopathy.", "No enlarged mediastinal or hilar lymph nodes."])
        )
    effusions = [finding for finding in findings if finding["kind"] == "pleural effusion"]
    if effusions:
        lines.append(f"{_choose(rng, ['Small', 'Moderate'])} {effusions[0]['side']} pleural effusion.")
    else:
        lines.append(_choose(rng, ["No pleural effusion.", "No pleural effusion or pneumothorax."]))
    bones = [finding for finding in findings if finding["kind"] == "bone lesion"]
    if bones:
        lines.append("Lytic lesion in a thoracic vertebral body, suspicious for metastasis.")
    else:
        lines.append(_choose(rng, ["No suspicious osseous lesion.", "Osseous structures without focal lesion."]))
    lines.append(_choose(rng, ["The central airways are patent.", "Trachea and main bronchi are patent."]))
    lines += ["", "IMPRESSION:"]
    impression = (
        f"{primary['diameter_mm']} mm {primary['margin']} {primary['density']} {primary['kind']} "
        f"in the {LOBE_NAMES[primary['lobe']]}"
    )
    if primary["density"] == "ground-glass" and primary["diameter_mm"] <= 30:
        impression += ", which may represent a slowly growing neoplasm; follow-up or tissue sampling advised."
    else:
        impression += ", suspicious for primary lung malignancy."
    lines.append(impression[0].upper() + impression[1:])
    if len(lesions) > 1:
        lines.append(f"{len(lesions) - 1} further pulmonary nodule{'s' if len(lesions) > 2 else ''}.")
    if nodes:
        lines.append("Thoracic lymphadenopathy, suspicious for nodal spread.")
    if effusions:
        lines.append("Pleural effusion; pleural spread cannot be excluded.")
    if bones:
        lines.append("Osseous metastasis suspected.")
    return "\n".join(lines)


def generate_chest_phantom(seed, shape=(128, 256, 256), spacing=None, noise_std=12.0, primary_lesion=None):
    """Make one reproducible chest CT phantom (same `seed`, `shape`, `spacing` -> identical output).

    `shape` and `spacing` (z, y, x) set the grid. With `spacing=None` the grid covers an adult chest
    (320 x 358 x 358 mm: (2.5, 1.4, 1.4) mm at the default shape), so a small grid such as (24, 64, 64) is a
    coarse but life-sized chest that lung segmentation finds. With an explicit spacing the anatomy fills that
    field of view proportionally (a tiny field of view gives a tiny chest). `primary_lesion` fixes attributes of the
    main tumour (`lobe`, `location`, `diameter_mm`, `margin`, `density`, `further_nodules`); the rest are drawn.
    """
    shape = tuple(int(size) for size in shape)
    if spacing is None:
        spacing = default_spacing(shape)
    spacing = tuple(float(value) for value in spacing)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing}")
    _check_overrides(primary_lesion)
    builder = _PhantomBuilder(seed, shape, spacing, noise_std, primary_lesion)
    builder.build_anatomy()
    builder.build_findings()
    builder.draw_labels_and_spread()
    builder.add_noise()
    report = write_report(builder.findings, builder.rng)
    geometry = builder.geometry
    origin = (float(geometry.x_mm[0]), float(geometry.y_mm[0]), float(-geometry.height_mm / 2 + geometry.z_mm[0]))
    return ChestPhantom(
        hu=builder.volume,
        spacing=spacing,
        origin=origin,
        lesion_mask=builder.lesion_mask,
        lung_mask=builder.lung_mask,
        findings=builder.findings,
        report=report,
        labels=builder.labels,
        seed=int(seed),
    )


def default_spacing(shape):
    """Spacing (z, y, x) mm at which a grid of `shape` covers the standard 320 x 358.4 x 358.4 mm chest field."""
    depth, height, width = (int(size) for size in shape)
    return (REFERENCE_HEIGHT_MM / depth, REFERENCE_FIELD_OF_VIEW_MM / height, REFERENCE_FIELD_OF_VIEW_MM / width)


def _check_overrides(primary_lesion):
    allowed = {
        "lobe": LOBE_CLASSES,
        "location": LOCATION_CLASSES,
        "margin": MARGIN_CLASSES,
        "density": DENSITY_CLASSES,
    }
    for name, value in (primary_lesion or {}).items():
        if name in allowed and value not in allowed[name]:
            raise ValueError(f"primary_lesion[{name!r}] must be one of {allowed[name]}, got {value!r}")
        if name not in allowed and name not in ("diameter_mm", "further_nodules"):
            raise ValueError(f"unknown primary_lesion field {name!r}")
