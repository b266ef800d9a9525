"""Longformer (RoBERTa byte-level BPE) tokenizer with no `transformers` dependency.

Why this exists: the JAX port should run (and pretrain) with only `tokenizers` installed, yet produce
exactly the ids, masks and offsets that `transformers.LongformerTokenizerFast` produces for the same
vocabulary, and write folders that `transformers` can load, so checkpoints move both ways.

Design notes:
* The pipeline is always rebuilt the RoBERTa way (byte-level pre-tokenizer and decoder,
  `<s> A </s></s> B </s>` post-processing), whichever files it came from; `transformers` does the same.
* `<mask>` strips the space on its left (lstrip), as in RoBERTa, so "a <mask>" predicts " word".
* `train` puts the specials first: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4 (real RoBERTa
  vocabularies keep `<mask>` last, at 50264); always use `mask_token_id` rather than a constant.
* A folder without `tokenizer_config.json` gets model_max_length 4096 (Longformer's pretraining length),
  where `transformers` would assume no limit.
* Truncation/padding are settings on the shared Rust tokenizer, so a lock keeps concurrent calls
  (e.g. data-loader threads) from seeing each other's settings.
* The global attention helpers are the rules the heads use by default (`global_attention.py`), so
  masks made here with the data equal the ones the model would compute.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from longformer import global_attention
from longformer.files import FileFormatError, json_type, read_json, read_text

__all__ = [
    "LongformerTokenizer",
    "LongformerTokenizerFast",
    "classification_global_mask",
    "qa_global_mask",
    "multiple_choice_global_mask",
]

DEFAULT_MODEL_MAX_LENGTH = 4096
# transformers writes ~1e30 into tokenizer_config.json to mean "no limit"; treat anything this big alike.
_NO_LIMIT = int(1e20)

# role -> default token; the order is also the order of `all_special_ids` (as in transformers).
_SPECIAL_ROLES = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}
_TRAIN_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4
_TRUNCATIONS = {"longest_first", "only_first", "only_second"}
_TOKENIZER_JSON = "a tokenizers tokenizer.json"
_VOCAB_JSON = "a BPE vocab.json (an object of token -> id)"
_MERGES_TXT = "a BPE merges.txt"


def _added_token(content: str, flags: dict | None = None, *, lstrip: bool = False) -> AddedToken:
    flags = flags or {}
    return AddedToken(
        content,
        lstrip=flags.get("lstrip", lstrip),
        rstrip=flags.get("rstrip", False),
        single_word=flags.get("single_word", False),
        normalized=flags.get("normalized", False),
        special=True,
    )


def _token_dict(tok: AddedToken) -> dict:
    return {
        "content": tok.content,
        "lstrip": tok.lstrip,
        "normalized": tok.normalized,
        "rstrip": tok.rstrip,
        "single_word": tok.single_word,
        "special": tok.special,
    }


def _read_backend(folder: Path) -> Tokenizer:
    """The BPE of tokenizer.json, else of vocab.json + merges.txt; a broken file is named."""
    full, vocab, merges = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
    if full.exists():
        try:
            return Tokenizer.from_file(str(full))
        except Exception as err:  # the Rust side raises bare Exceptions
            read_json(full, _TOKENIZER_JSON)  # names a file that is not JSON at all
            raise FileFormatError(f"{full}: not a tokenizers file ({err}); expected {_TOKENIZER_JSON}") from None
    if vocab.exists() or merges.exists():
        for file in (vocab, merges):
            if not file.exists():
                raise FileNotFoundError(f"{file}: missing; vocab.json and merges.txt come as a pair")
        try:
            return Tokenizer(BPE.from_file(str(vocab), str(merges)))
        except Exception as err:
            ids = read_json(vocab, _VOCAB_JSON)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids.values()):
                raise FileFormatError(f"{vocab}: not every token id is an integer; expected {_VOCAB_JSON}") from None
            read_text(merges, _MERGES_TXT)
            reason = str(err).split(": ", 1)[-1]  # drops "Error while reading BPE files: "
            raise FileFormatError(f"{merges}: {reason}; expected {_MERGES_TXT} matching {vocab}") from None
    raise FileNotFoundError(
        f"No tokenizer files in {str(folder)!r}: expected 'tokenizer.json', or 'vocab.json' and 'merges.txt'."
    )


def _read_tokenizer_json(file: Path) -> dict:
    """tokenizer_config.json / special_tokens_map.json, with the values `from_pretrained` uses checked."""
    what = f"a transformers {file.name} (a JSON object)"
    config = read_json(file, what)

    def bad(key, value, should):
        return FileFormatError(f"{file}: {key} is {json_type(value)} ({value!r:.60}), not {should}; expected {what}")

    for role in _SPECIAL_ROLES:
        value = config.get(role)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, dict) and isinstance(value.get("content"), str)):
            raise bad(role, value, 'a token string or {"content": ...}')
    max_len = config.get("model_max_length")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, float))):
        raise bad("model_max_length", max_len, "a number")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise bad("added_tokens_decoder", decoder, "an object of id -> token")
        for key, token in decoder.items():
            if not key.isdigit() or not (isinstance(token, dict) and isinstance(token.get("content"), str)):
                raise bad(f"added_tokens_decoder[{key!r}]", token, 'a token {"content": ...} under an integer id')
    return config


# The reference model's default global attention, on numpy arrays (the rules: global_attention.py).
classification_global_mask = global_attention.classification
qa_global_mask = global_attention.question_answering
multiple_choice_global_mask = global_attention.multiple_choice


class LongformerTokenizer:
    def __init__(
        self,
        backend: Tokenizer,
        *,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        special_tokens: dict[str, str | dict] | None = None,
        extra_added_tokens: Sequence[AddedToken] = (),
        trim_offsets: bool = True,
        add_prefix_space: bool = False,
    ):
        given = dict(special_tokens or {})
        self._special = {}
        wanted = list(extra_added_tokens)
        for role, default in _SPECIAL_ROLES.items():
            value = given.get(role, default)
            flags = value if isinstance(value, dict) else None
            content = value["content"] if isinstance(value, dict) else str(value)
            self._special[role] = content
            wanted.append(_added_token(content, flags, lstrip=role == "mask_token"))
        # Keep tokens (and their flags) that the backend already declares; add only the missing ones.
        present = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing, seen = [], set(present)
        for tok in wanted:
            if tok.content not in seen:
                missing.append(tok)
                seen.add(tok.content)
        if missing:
            backend.add_special_tokens(missing)

        self._tok = backend
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.RobertaProcessing(
            (self.sep_token, self.sep_token_id),
            (self.cls_token, self.cls_token_id),
            trim_offsets=trim_offsets,
            add_prefix_space=add_prefix_space,
        )
        backend.no_truncation()
        backend.no_padding()
        self._lock = threading.Lock()
        self._trim_offsets = trim_offsets
        self._add_prefix_space = add_prefix_space
        self.model_max_length = int(model_max_length)

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_pretrained(cls, path: str | Path) -> "LongformerTokenizer":
        folder = Path(path)
        if folder.is_file():
            raise FileFormatError(f"{folder}: a file, not a folder; expected a tokenizer folder")
        backend = _read_backend(folder)
        config = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins on conflicts...
            if (folder / name).exists():
                for key, value in _read_tokenizer_json(folder / name).items():
                    known = config.get(key)
                    if not (isinstance(known, dict) and known.get("content") == value):  # ...but keeps flags
                        config[key] = value
        decoder = config.get("added_tokens_decoder") or {}
        extra = [_added_token(d["content"], d) for _, d in sorted(decoder.items(), key=lambda kv: int(kv[0]))]
        max_len = config.get("model_max_length")
        return cls(
            backend,
            model_max_length=DEFAULT_MODEL_MAX_LENGTH if max_len is None else max_len,
            special_tokens={role: config[role] for role in _SPECIAL_ROLES if config.get(role) is not None},
            extra_added_tokens=extra,
            trim_offsets=config.get("trim_offsets", True),
            add_prefix_space=config.get("add_prefix_space", False),
        )

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 50265,
        min_frequency: int = 2,
        save_dir: str | Path | None = None,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    ) -> "LongformerTokenizer":
        """Train a byte-level BPE; specials get ids 0..4 (`<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>`)."""
        backend = Tokenizer(BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[_added_token(t, lstrip=t == "<mask>") for t in _TRAIN_SPECIALS],
        )
        backend.train_from_iterator(texts, trainer=trainer)
        tok = cls(backend, model_max_length=model_max_length)
        if save_dir is not None:
            tok.save(save_dir)
        return tok

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._tok.save(str(folder / "tokenizer.json"))
        self._tok.model.save(str(folder))  # vocab.json + merges.txt
        added = self._tok.get_added_tokens_decoder()
        by_content = {t.content: t for t in added.values()}
        special_map = {role: _token_dict(by_content[content]) for role, content in self._special.items()}
        config = {
            "tokenizer_class": "LongformerTokenizer",
            "model_max_length": self.model_max_length,
            "add_prefix_space": self._add_prefix_space,
            "trim_offsets": self._trim_offsets,
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
            **self._special,
            "added_tokens_decoder": {str(i): _token_dict(t) for i, t in sorted(added.items())},
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------ vocabulary facts
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self._tok.id_to_token(index)

    bos_token = property(lambda self: self._special["bos_token"])
    eos_token = property(lambda self: self._special["eos_token"])
    unk_token = property(lambda self: self._special["unk_token"])
    sep_token = property(lambda self: self._special["sep_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    cls_token = property(lambda self: self._special["cls_token"])
    mask_token = property(lambda self: self._special["mask_token"])
    bos_token_id = property(lambda self: self._tok.token_to_id(self.bos_token))
    eos_token_id = property(lambda self: self._tok.token_to_id(self.eos_token))
    unk_token_id = property(lambda self: self._tok.token_to_id(self.unk_token))
    sep_token_id = property(lambda self: self._tok.token_to_id(self.sep_token))
    pad_token_id = property(lambda self: self._tok.token_to_id(self.pad_token))
    cls_token_id = property(lambda self: self._tok.token_to_id(self.cls_token))
    mask_token_id = property(lambda self: self._tok.token_to_id(self.mask_token))

    @property
    def all_special_ids(self) -> list[int]:
        ids = [self._tok.token_to_id(t) for t in self._special.values()]
        return list(dict.fromkeys(ids))

    # ------------------------------------------------------------------ encoding
    def encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Batch-encode without `<s>`/`</s>`, truncation or padding (for packing pretraining documents)."""
        with self._lock:
            return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _strategies(self, padding, truncation, max_length):
        """Resolve padding/truncation arguments the way transformers does."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # a bare max_length means "truncate"
        if padding in (False, None, "do_not_pad"):
            pad = None
        elif padding in (True, "longest"):
            pad = "longest"
        elif padding == "max_length":
            pad = "max_length"
        else:
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if truncation in (False, None, "do_not_truncate"):
            trunc = None
        elif truncation is True:
            trunc = "longest_first"
        elif truncation in _TRUNCATIONS:
            trunc = truncation
        else:
            raise ValueError(f"truncation must be a bool or one of {sorted(_TRUNCATIONS)}, got {truncation!r}")
        if max_length is None and (pad == "max_length" or trunc is not None):
            if self.model_max_length >= _NO_LIMIT:  # nothing to pad or truncate to
                pad = None if pad == "max_length" else pad
                trunc = None
            else:
                max_length = self.model_max_length
        return pad, trunc, max_length

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_tensors: str | None = None,
    ) -> dict:
        """Encode one text (or pair) or a batch: `<s> A </s>` / `<s> A </s></s> B </s>`.

        `truncation=None` (default) behaves like False unless `max_length` is given without padding,
        in which case it truncates (longest_first), as in transformers.
        """
        batched = not isinstance(text, str)
        if batched:
            if isinstance(text_pair, str):
                raise TypeError("text_pair must be a list of strings when text is a batch")
            if text_pair is not None and len(text_pair) != len(text):
                raise ValueError(f"text has {len(text)} entries but text_pair has {len(text_pair)}")
            inputs = list(text) if text_pair is None else list(zip(text, text_pair))
        else:
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError("text_pair must be a string when text is a string")
            inputs = [text if text_pair is None else (text, text_pair)]
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        pad, trunc, max_length = self._strategies(padding, truncation, max_length)

        with self._lock:
            try:
                if trunc is not None:
                    self._tok.enable_truncation(max_length, strategy=trunc)
                if pad is not None:
                    self._tok.enable_padding(
                        pad_id=self.pad_token_id,
                        pad_token=self.pad_token,
                        length=max_length if pad == "max_length" else None,
                    )
                encodings = self._tok.encode_batch(inputs, add_special_tokens=True)
            except Exception as err:  # the Rust side raises bare Exceptions (e.g. bad truncation)
                raise ValueError(str(err)) from err
            finally:
                self._tok.no_truncation()
                self._tok.no_padding()

        out = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_offsets_mapping:
            out["offset_mapping"] = [list(e.offsets) for e in encodings]
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_tensors == "np":
            if len({len(ids) for ids in out["input_ids"]}) > 1:
                raise ValueError("sequences have different lengths; pass padding=True to get arrays")
            return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        return out if batched else {k: v[0] for k, v in out.items()}

    # ------------------------------------------------------------------ decoding
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = np.asarray(ids).reshape(-1).tolist()
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    # ------------------------------------------------------------------ global attention defaults
    classification_global_mask = staticmethod(classification_global_mask)

    def qa_global_mask(self, input_ids, sep_token_id: int | None = None) -> np.ndarray:
        return qa_global_mask(input_ids, self.sep_token_id if sep_token_id is None else sep_token_id)

    def multiple_choice_global_mask(self, input_ids, sep_token_id: int | None = None) -> np.ndarray:
        return multiple_choice_global_mask(
            input_ids, self.sep_token_id if sep_token_id is None else sep_token_id
        )


LongformerTokenizerFast = LongformerTokenizer
