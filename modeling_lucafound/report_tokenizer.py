"""Report tokenizer: a BERT WordPiece tokenizer trained offline on radiology report text (no download needed).

Pretraining from scratch on a cohort trains one on that cohort's reports; pretraining from a Hub text encoder
(`--init-text`) uses that encoder's own tokenizer instead.
"""

from transformers import BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_report_tokenizer(texts, vocab_size=4096, model_max_length=256):
    """Train a lower-casing WordPiece tokenizer on `texts` and return it as a `BertTokenizerFast`.

    The special tokens take the ids BERT uses relative to each other ([PAD]=0), so `pad_token_id` = 0 as in
    `LuCaFoundTextConfig`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise ValueError("train_report_tokenizer needs at least one non-empty report text.")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=True,
        model_max_length=model_max_length,
    )


__all__ = ["train_report_tokenizer"]
