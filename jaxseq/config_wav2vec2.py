"""The Wav2Vec2/HuBERT sections of the config: the encoder (`wav2vec2`) and its
self-supervised pre-training (`ssl`). Re-exported by jaxseq.config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wav2Vec2Config:
    """Wav2Vec2/HuBERT (model.frontend=waveform: ctc, ssl, classify): transformers'
    Wav2Vec2Config/HubertConfig fields with their defaults (wav2vec2-base), one for one the
    fields of jaxseq.models.wav2vec2.Wav2Vec2Dims but the heads' (vocab_size comes from the
    vocabulary) and remat (model.remat). Dropout, LayerDrop and the span masks act in
    training only; time masks replace frames by the learned masked_spec_embed."""

    model_type: str = "wav2vec2"  # wav2vec2 | hubert: the transformers class export writes
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # 320 samples (20 ms) per frame
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # group (base) | layer (large, lv60)
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False  # pre-LN layers + a final LayerNorm (large)
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    # fairseq's feature_grad_mult (jaxseq and fairseq only; not a transformers field): the conv
    # feature encoder's gradient is scaled by this (0.1 in the wav2vec 2.0 / HuBERT base
    # pre-training recipes), its outputs unchanged.
    feature_grad_mult: float = 1.0


@dataclass(frozen=True)
class SSLConfig:
    """Self-supervised pre-training of the Wav2Vec2/HuBERT encoder (model.family=ssl; the
    wav2vec2 section sizes the encoder, its mask_time_* the masked spans). The objective's
    fields are transformers' Wav2Vec2Config pre-training fields and fairseq's HubertConfig /
    HubertCriterionConfig ones, with their base recipes' defaults."""

    objective: str = "wav2vec2"  # wav2vec2 (contrastive + diversity) | hubert (cluster targets)
    # wav2vec2: the Gumbel product quantizer and the contrastive task.
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    feat_quantizer_dropout: float = 0.0
    num_negatives: int = 100
    contrastive_logits_temperature: float = 0.1
    diversity_loss_weight: float = 0.1
    # max(max · decay^step, min): the Gumbel-softmax temperature at each step.
    gumbel_temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    # hubert: targets from DATASET/{split}.targets.npz (scripts/hubert_targets.py).
    num_classes: int = 100
    final_dim: int = 256
    pred_masked_weight: float = 1.0
    pred_nomask_weight: float = 0.0
    features_pen_weight: float = 10.0
