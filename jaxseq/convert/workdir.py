"""`jaxseq convert` and `jaxseq export`: HF Whisper folders ⇄ jaxseq workdirs, and HF AST
(`ASTForAudioClassification`) folders → jaxseq classify workdirs.

A converted workdir is an ordinary one that `evaluate`, `transcribe`, `export` and
`train.init_from` read:

    WORKDIR/config.yaml          model.family=whisper with the checkpoint's dimensions
    WORKDIR/frontend.json        Whisper's log-mel settings (80 or 128 mel bins)
    WORKDIR/tokenizer/           the checkpoint's tokenizer and generation files, copied
    WORKDIR/checkpoints/0/       the weights (parameters only; no optimizer state)

An AST folder gives model.family=classify with classify.encoder=ast, a frontend.json with the
checkpoint's mel bins, and labels.json (the checkpoint's id2label) instead of tokenizer/.

A `Wav2Vec2ForCTC` or `HubertForCTC` folder (with its processor's vocab.json) gives
model.family=ctc with model.frontend=waveform and the checkpoint's wav2vec2 section, a
frontend.json of waveform records, and vocab.json, jaxseq's characters of the checkpoint's
tokens (`convert_wav2vec2_to_workdir`); a `Wav2Vec2ForPreTraining` folder gives model.family=ssl
(ssl.objective=wav2vec2, the quantizer's sizes as the ssl section), and a
`Wav2Vec2ForSequenceClassification` or `HubertForSequenceClassification` folder a classify
workdir (classify.encoder=wav2vec2, labels.json from id2label), and a
`Wav2Vec2ForAudioFrameClassification` folder one with classify.level=frame. `export` writes each
back.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jaxseq.config import (
    FRONTEND_FILE,
    Config,
    frontend_settings,
    load_config,
    save_config,
    to_yaml,
)
from jaxseq.convert import hf_wav2vec2 as w2v
from jaxseq.convert import hf_wav2vec2_folder as w2v_folder
from jaxseq.convert.hf_ast import MODEL_TYPE as AST_MODEL_TYPE
from jaxseq.convert.hf_ast import ast_config_from_hf, ast_params_from_hf
from jaxseq.convert.hf_whisper import (
    ConversionError,
    _read_tensors,
    export_hf_whisper,
    load_hf_whisper,
)
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.models.wav2vec2_pretraining import Wav2Vec2PreTrainingDims
from jaxseq.tasks.ctc import VOCAB_FILE as CTC_VOCAB_FILE
from jaxseq.tasks.whisper import TOKENIZER_DIR
from jaxseq.text.vocab import CharVocab
from jaxseq.text.whisper_tokenizer import WhisperTokenizer

# Files of a transformers Whisper folder that travel with the weights (all optional but
# tokenizer.json, which jaxseq reads; the rest is kept so that `export` gives them back).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "generation_config.json",
)
MAX_LABEL_LENGTH = 128  # default transcript length limit (tokens) of a converted workdir


def convert_to_workdir(
    hf_folder: str | Path, workdir: str | Path, *, language: str = "en", task: str = "transcribe"
) -> Path:
    """Imports a transformers `WhisperForConditionalGeneration` folder into a new workdir (an
    `ASTForAudioClassification` folder goes to `convert_ast_to_workdir`, a Wav2Vec2/HuBERT one
    to `convert_wav2vec2_to_workdir`; language and task apply to Whisper only).

    Raises:
      ConversionError: naming the folder when a file is missing, the architecture is not
        Whisper or a tensor's shape is wrong (see `load_hf_whisper`), when its encoder and
        decoder differ in heads or MLP width (jaxseq's config has one of each), or when
        `workdir` already holds checkpoints.
    """
    hf_folder, workdir = Path(hf_folder), Path(workdir)
    if _model_type(hf_folder) == AST_MODEL_TYPE:
        return convert_ast_to_workdir(hf_folder, workdir)
    if _model_type(hf_folder) in w2v.MODEL_TYPES:
        return convert_wav2vec2_to_workdir(hf_folder, workdir)
    if (workdir / "checkpoints").exists():
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    params, dims = load_hf_whisper(hf_folder)
    for enc, dec in (("encoder_heads", "decoder_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if getattr(dims, enc) != getattr(dims, dec):
            raise ConversionError(
                f"{hf_folder}: {enc}={getattr(dims, enc)} differs from {dec}="
                f"{getattr(dims, dec)}; jaxseq's Whisper config has one value for both"
            )
    tokenizer = WhisperTokenizer.from_folder(hf_folder)  # fails early, naming the folder
    if tokenizer.size > dims.vocab_size:
        raise ConversionError(
            f"{hf_folder}: tokenizer.json has {tokenizer.size} tokens but the model only "
            f"{dims.vocab_size}"
        )
    overrides = [
        "model.family=whisper",
        f"model.d_model={dims.d_model}",
        f"model.num_heads={dims.encoder_heads}",
        f"model.num_layers={dims.encoder_layers}",
        f"model.decoder_layers={dims.decoder_layers}",
        f"model.mlp_dim={dims.encoder_ffn_dim}",
        f"model.max_source_positions={dims.max_source_positions}",
        f"model.max_target_positions={dims.max_target_positions}",
        f"model.vocab_size={dims.vocab_size}",
        f"model.language={language}",
        f"model.task={task}",
        "model.dropout=0.0",
        "model.label_smoothing=0.0",
        f"prepare.frontend.n_mels={dims.n_mels}",
        f"data.buckets=[{dims.num_frames}]",
        f"data.max_label_length={min(MAX_LABEL_LENGTH, dims.max_target_positions - 4)}",
        "eval.decoder=beam",
        "eval.beam_size=5",
        "optim.freeze=[encoder/pos_embedding]",  # sinusoidal, as transformers freezes it
    ]
    cfg = load_config(None, overrides)
    _write_workdir(workdir, cfg, params, hf_folder)
    (workdir / TOKENIZER_DIR).mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, workdir / TOKENIZER_DIR / name)
    return workdir


def _write_workdir(workdir: Path, cfg: Config, params: Any, hf_folder: Path) -> None:
    """config.yaml, frontend.json (`cfg.prepare`'s frontend and text policy: the checkpoint's
    features) and the converted parameters as checkpoint 0."""
    from jaxseq.train.checkpoint import Checkpointer

    workdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, workdir / "config.yaml")
    frontend = {
        "frontend": frontend_settings(cfg.prepare.frontend),
        "text": asdict(cfg.prepare.text),
    }
    (workdir / FRONTEND_FILE).write_text(json.dumps(frontend, indent=2))
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train)
    ckpt.save_params(
        0, params, {"step": 0, "converted_from": str(hf_folder), "config": to_yaml(cfg)}
    )
    ckpt.wait()
    ckpt.close()
    logging.info("converted %s into %s", hf_folder, workdir)


def _model_type(hf_folder: Path) -> str | None:
    """config.json's model_type, or None when there is no readable config.json (the Whisper
    path then names the problem)."""
    try:
        return json.loads((hf_folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def convert_ast_to_workdir(hf_folder: str | Path, workdir: str | Path) -> Path:
    """Imports a transformers `ASTForAudioClassification` folder (config.json and
    model.safetensors, a sharded index or pytorch_model.bin) into a new classify workdir:
    config.yaml (model.family=classify, classify.encoder=ast, the checkpoint's sizes,
    data.buckets=[classify.max_frames]), frontend.json (jaxseq's log-mel with the checkpoint's
    num_mel_bins), labels.json (id2label in id order) and the weights as checkpoint 0.

    The weights are AST's, but not its features: AST checkpoints were trained on Kaldi fbank
    features (torchaudio.compliance.kaldi.fbank, 25 ms window, 10 ms shift, normalized with
    the dataset's mean and std), while jaxseq feeds its Whisper-style log-mel (same 10 ms
    frame rate). Fine-tune the converted model on jaxseq features before trusting its outputs.

    Raises:
      ConversionError: naming the folder when config.json or the weights are missing or
        malformed, the config uses what jaxseq's AST lacks (see `ast_config_from_hf`), a
        tensor is missing or misshapen, or `workdir` already holds checkpoints.
    """
    from jaxseq.data.labels import LabelSet
    from jaxseq.tasks.classify import LABELS_FILE

    hf_folder, workdir = Path(hf_folder), Path(workdir)
    if (workdir / "checkpoints").exists():
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    try:
        hf_config = json.loads((hf_folder / "config.json").read_text())
        model, classify, n_mels, labels = ast_config_from_hf(hf_config)
    except (OSError, ValueError) as err:  # ConversionError is a ValueError
        raise ConversionError(f"{hf_folder}/config.json: {err}") from None
    overrides = [
        "model.family=classify",
        *(f"model.{k}={v}" for k, v in model.items()),
        *(f"classify.{k}={v}" for k, v in classify.items()),
        f"prepare.frontend.n_mels={n_mels}",
        f"data.buckets=[{classify['max_frames']}]",
    ]
    cfg = load_config(None, overrides)
    try:
        params = ast_params_from_hf(
            _read_tensors(hf_folder),
            cfg.model,
            cfg.classify,
            n_mels=n_mels,
            num_labels=len(labels),
        )
        label_set = LabelSet(labels, cfg.classify.level)
    except ValueError as err:
        raise ConversionError(f"{hf_folder}: {err}") from None
    _write_workdir(workdir, cfg, params, hf_folder)
    label_set.save(workdir / LABELS_FILE)
    return workdir


# Waveform lengths of a converted Wav2Vec2/HuBERT workdir (samples at 16 kHz: 5 to 30 s).
WAVEFORM_BUCKETS = (80000, 160000, 320000, 480000)


def convert_wav2vec2_to_workdir(hf_folder: str | Path, workdir: str | Path) -> Path:
    """Imports a transformers `Wav2Vec2ForCTC` or `HubertForCTC` folder (config.json, the
    weights as for Whisper, the processor's vocab.json, and optionally its tokenizer_config.json
    and preprocessor_config.json) into a new ctc workdir: config.yaml (model.frontend=waveform,
    the checkpoint's wav2vec2 section, data.normalize_waveform from do_normalize), frontend.json
    (int16 waveform records; the text policy of its characters), vocab.json (jaxseq's CTC
    characters: the blank, config.json's pad_token_id, first; `ctc_characters`) and the weights
    as checkpoint 0, the CTC head's outputs in that order. A `Wav2Vec2ForPreTraining` folder
    (no vocabulary) gives an ssl workdir instead (`_convert_wav2vec2_pretraining`), a
    `Wav2Vec2ForSequenceClassification`, `HubertForSequenceClassification` or
    `Wav2Vec2ForAudioFrameClassification` folder a classify workdir
    (`_convert_wav2vec2_classifier`).

    Raises:
      ConversionError: naming the folder when a file is missing or malformed, the architecture
        is not a CTC, classification or pre-training one (`w2v.ARCHITECTURES`; transformers has
        no HubertForAudioFrameClassification), the config uses what jaxseq's Wav2Vec2 lacks,
        the vocabulary's size is not the model's, or `workdir` already holds checkpoints.
    """
    hf_folder, workdir = Path(hf_folder), Path(workdir)
    if (workdir / "checkpoints").exists():
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    try:
        hf_config = json.loads((hf_folder / "config.json").read_text())
        architectures = hf_config.get("architectures") or []
        head = w2v.ARCHITECTURES.get(architectures[0]) if architectures else None
        if head is None:
            raise ConversionError(
                f"architectures {architectures}: jaxseq converts Wav2Vec2ForCTC, HubertForCTC "
                "and Wav2Vec2ForPreTraining folders into workdirs, and "
                "Wav2Vec2ForSequenceClassification, HubertForSequenceClassification and "
                "Wav2Vec2ForAudioFrameClassification ones (transformers has no "
                "HubertForAudioFrameClassification)"
            )
        fields = w2v.wav2vec2_config_from_hf(hf_config)
        if head == "pretraining":
            objective = w2v.wav2vec2_pretraining_config_from_hf(hf_config)
        if head in ("sequence", "frame"):
            w2v.classifier_architecture(hf_config["model_type"], head)  # HuBERT: no frame head
            labels = w2v.label_names(hf_config)
    except (OSError, ValueError) as err:  # ConversionError is a ValueError
        raise ConversionError(f"{hf_folder}/config.json: {err}") from None
    if head == "pretraining":
        return _convert_wav2vec2_pretraining(hf_folder, workdir, fields, objective)
    if head in ("sequence", "frame"):
        return _convert_wav2vec2_classifier(hf_folder, workdir, fields, hf_config, labels, head)
    tokens = w2v.read_ctc_vocab(hf_folder)
    if len(tokens) != fields["vocab_size"]:
        raise ConversionError(
            f"{hf_folder}: vocab.json has {len(tokens)} tokens but config.json's vocab_size is "
            f"{fields['vocab_size']}"
        )
    blank = int(hf_config.get("pad_token_id", 0))  # transformers' CTC blank
    delimiter = _json_or_empty(hf_folder / w2v_folder.TOKENIZER_CONFIG).get(
        "word_delimiter_token", w2v.WORD_DELIMITER
    )
    chars = w2v_folder.ctc_characters(tokens, blank, delimiter)
    model_type = hf_config["model_type"]
    try:
        dims = Wav2Vec2Dims(**fields)
        params = w2v.wav2vec2_params_from_hf(_read_tensors(hf_folder), dims, "ctc", model_type)
    except ValueError as err:
        raise ConversionError(f"{hf_folder}: {err}") from None
    order = w2v_folder.blank_first_order(len(tokens), blank)
    params["head"] = {
        "kernel": params["head"]["kernel"][:, order],
        "bias": params["head"]["bias"][order],
    }
    charset = "".join(c for c in chars if len(c) == 1)
    cfg = load_config(
        _waveform_config(
            hf_folder,
            "ctc",
            fields,
            model_type,
            {"text": {"charset": charset, "lowercase": True}},
        )
        | {"optim": {"freeze": ["encoder/feature_encoder/.*"]}}
    )
    _write_workdir(workdir, cfg, params, hf_folder)
    CharVocab(chars).save(workdir / CTC_VOCAB_FILE)
    return workdir


def _waveform_config(
    hf_folder: Path, family: str, fields: dict, model_type: str, prepare: dict
) -> dict:
    """The config dict of a converted Wav2Vec2/HuBERT workdir of `family`: model.frontend=
    waveform, the wav2vec2 section of the checkpoint's `fields` (without the heads' sizes),
    waveform records at the processor's sampling rate and its do_normalize (`prepare` adds to
    the prepare section)."""
    section = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    for key in ("vocab_size", "num_labels", "classifier_proj_size", "use_weighted_layer_sum"):
        del section[key]  # the heads'
    preprocessor = _json_or_empty(hf_folder / w2v_folder.PREPROCESSOR_CONFIG)
    frontend = {"kind": "waveform", "sample_rate": preprocessor.get("sampling_rate", 16000)}
    return {
        "model": {"family": family, "frontend": "waveform"},
        "wav2vec2": {**section, "model_type": model_type},
        "prepare": {"frontend": frontend, **prepare},
        "data": {
            "buckets": list(WAVEFORM_BUCKETS),
            "normalize_waveform": bool(preprocessor.get("do_normalize", True)),
        },
    }


def _convert_wav2vec2_pretraining(
    hf_folder: Path, workdir: Path, fields: dict, objective: dict
) -> Path:
    """A `Wav2Vec2ForPreTraining` folder → an ssl workdir (ssl.objective=wav2vec2): the
    encoder, quantizer and contrastive projections as checkpoint 0, the config's quantizer and
    loss settings as the ssl section. Training it continues the pre-training; a CTC config's
    `train.init_from` takes its encoder."""
    try:
        params = w2v.wav2vec2_params_from_hf(
            _read_tensors(hf_folder),
            Wav2Vec2Dims(**fields),
            "contrastive",
            pretraining_dims=Wav2Vec2PreTrainingDims(**objective),
        )
    except ValueError as err:
        raise ConversionError(f"{hf_folder}: {err}") from None
    config = _waveform_config(hf_folder, "ssl", fields, "wav2vec2", {})
    config["ssl"] = {"objective": "wav2vec2", **objective}
    config["data"]["max_label_length"] = 1  # the text is not read
    cfg = load_config(config)
    _write_workdir(workdir, cfg, params, hf_folder)
    return workdir


def _convert_wav2vec2_classifier(
    hf_folder: Path, workdir: Path, fields: dict, hf_config: dict, labels: list[str], head: str
) -> Path:
    """A `Wav2Vec2ForSequenceClassification` / `HubertForSequenceClassification` folder (head
    "sequence") or a `Wav2Vec2ForAudioFrameClassification` one ("frame") → a classify workdir
    (classify.encoder=wav2vec2 at that level, the checkpoint's classifier_proj_size and
    use_weighted_layer_sum) with labels.json (id2label in id order) and the weights as
    checkpoint 0. At the frame level, data.max_label_length is the largest bucket (one label
    per sample of a record)."""
    from jaxseq.data.labels import LabelSet
    from jaxseq.tasks.classify import LABELS_FILE

    model_type = hf_config["model_type"]
    tensors = _read_tensors(hf_folder)  # a ConversionError naming the folder
    try:
        label_set = LabelSet(labels, head)
        params = w2v.wav2vec2_params_from_hf(tensors, Wav2Vec2Dims(**fields), head, model_type)
    except ValueError as err:
        raise ConversionError(f"{hf_folder}: {err}") from None
    config = _waveform_config(hf_folder, "classify", fields, model_type, {})
    config["classify"] = {
        "encoder": "wav2vec2",
        "level": head,
        "pooling": "mean",
        "classifier_proj_size": fields["classifier_proj_size"],
        "use_weighted_layer_sum": fields["use_weighted_layer_sum"],
    }
    config["optim"] = {"freeze": ["encoder/feature_encoder/.*"]}  # freeze_feature_encoder()
    # one label per clip, or per sample
    config["data"]["max_label_length"] = max(WAVEFORM_BUCKETS) if head == "frame" else 1
    cfg = load_config(config)
    _write_workdir(workdir, cfg, params, hf_folder)
    label_set.save(workdir / LABELS_FILE)
    return workdir


def _json_or_empty(path: Path) -> dict:
    """A JSON file's object, or {} when there is no such file."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None


def export_workdir(workdir: str | Path, out: str | Path, *, step: int | None = None) -> Path:
    """Writes a transformers Whisper folder (config.json, model.safetensors and the tokenizer
    files) from a seq2seq or whisper workdir's checkpoint (default: best, else latest); a ctc
    workdir with model.frontend=waveform gives a Wav2Vec2ForCTC (or HubertForCTC) folder with
    its processor files (`export_hf_wav2vec2_ctc`), an ssl workdir of the wav2vec2 objective a
    Wav2Vec2ForPreTraining folder (`export_hf_wav2vec2_pretraining`), a classify workdir with
    classify.encoder=wav2vec2 a Wav2Vec2ForSequenceClassification (or
    HubertForSequenceClassification) folder, or at classify.level=frame a
    Wav2Vec2ForAudioFrameClassification one (`export_hf_wav2vec2_classifier`)."""
    from jaxseq.train.trained import load_trained

    trained = load_trained(workdir, step=step)
    exported = _export_wav2vec2(trained, out)
    if exported is not None:
        logging.info("exported %s step %d to %s", workdir, trained.step, exported)
        return exported
    if trained.cfg.model.scan_layers:
        raise ConversionError(
            f"{workdir} was trained with model.scan_layers=true (stacked encoder layers); "
            "transformers' Whisper has one parameter set per layer"
        )
    if trained.cfg.model.family not in ("seq2seq", "whisper"):
        raise ConversionError(
            f"{workdir} holds a model.family={trained.cfg.model.family} model; only seq2seq and "
            "whisper workdirs export to transformers' WhisperForConditionalGeneration, ctc "
            "ones with model.frontend=waveform to Wav2Vec2ForCTC/HubertForCTC, classify ones "
            "with classify.encoder=wav2vec2 to Wav2Vec2ForSequenceClassification/"
            "HubertForSequenceClassification (Wav2Vec2ForAudioFrameClassification at "
            "classify.level=frame), and ssl ones with ssl.objective=wav2vec2 to "
            "Wav2Vec2ForPreTraining"
        )
    out = export_hf_whisper(trained.params, trained.task.dims, out)
    source = Path(workdir) / TOKENIZER_DIR
    if source.is_dir():  # whisper: the checkpoint's tokenizer and generation files
        for file in source.iterdir():
            shutil.copy2(file, out / file.name)
    else:  # seq2seq: jaxseq's own BPE tokenizer.json
        shutil.copy2(Path(workdir) / "tokenizer.json", out / "tokenizer.json")
    logging.info("exported %s step %d to %s", workdir, trained.step, out)
    return out


def _export_wav2vec2(trained: Any, out: str | Path) -> Path | None:
    """The transformers folder of a Wav2Vec2/HuBERT workdir (ctc with model.frontend=waveform,
    classify with classify.encoder=wav2vec2, ssl with ssl.objective=wav2vec2), or None for
    another model."""
    cfg, task = trained.cfg, trained.task
    normalize = cfg.data.normalize_waveform
    if cfg.model.family == "ctc" and cfg.model.frontend == "waveform":
        return w2v_folder.export_hf_wav2vec2_ctc(
            trained.params,
            task.dims,
            cfg.wav2vec2.model_type,
            task.tokenizer.chars,
            out,
            do_normalize=normalize,
        )
    if cfg.model.family == "classify" and cfg.classify.encoder == "wav2vec2":
        return w2v_folder.export_hf_wav2vec2_classifier(
            trained.params,
            task.dims,
            cfg.wav2vec2.model_type,
            task.tokenizer.names,
            out,
            do_normalize=normalize,
            head=cfg.classify.level,
        )
    if cfg.model.family == "ssl" and cfg.ssl.objective == "wav2vec2":
        return w2v_folder.export_hf_wav2vec2_pretraining(
            trained.params, task.dims, task.objective, out, do_normalize=normalize
        )
    return None
