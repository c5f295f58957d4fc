"""LuCaFoundProcessor: the CT image processor and the report tokenizer, saved and loaded as one folder."""

from transformers import ProcessorMixin


class LuCaFoundProcessor(ProcessorMixin):
    """Turns CT volumes into `pixel_values` (LuCaFoundImageProcessor) and report text into `input_ids`.

    `processor(images=..., text=...)` returns one `BatchFeature` with both; either may be omitted.
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, spacing=None, return_tensors="pt", padding=True, truncation=True,
                 max_length=None, return_crop_info=False, **kwargs):
        if images is None and text is None:
            raise ValueError("LuCaFoundProcessor needs `images` (CT volumes), `text` (reports), or both.")
        encoding = {}
        if text is not None:
            encoding.update(
                self.tokenizer(
                    text, return_tensors=return_tensors, padding=padding, truncation=truncation, max_length=max_length
                )
            )
        if images is not None:
            encoding.update(
                self.image_processor(
                    images, spacing=spacing, return_tensors=return_tensors, return_crop_info=return_crop_info, **kwargs
                )
            )
        from transformers import BatchFeature

        return BatchFeature(data=encoding, tensor_type=None)

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


LuCaFoundProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["LuCaFoundProcessor"]
