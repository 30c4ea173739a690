"""Hugging Face speech encoders (WavLM, HuBERT, wav2vec 2.0, data2vec-audio) as frontends.

All ``num_hidden_layers + 1`` hidden states (CNN/feature-projection output and every
Transformer layer) are returned stacked as (B, L, T, D). Padding is handled so that an
utterance gives the same hidden states alone or in a batch:

* encoders whose CNN uses layer norm (``feat_extract_norm == "layer"``: WavLM/HuBERT/
  wav2vec 2.0 Large) run as one padded batch with a sample-level attention mask;
* encoders whose first CNN layer uses group norm (Base models) normalise over the whole
  padded signal, and data2vec-audio's stack of positional convolutions carries padded
  frames into valid ones: these must not see padding, so each distinct length runs on
  its own (sort inputs by length to keep such batches efficient).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from lapsv.config import FrontendConfig
from lapsv.errors import ModelLoadError
from lapsv.frontends.base import Frontend, FrontendOutput

if TYPE_CHECKING:
    import transformers

# model_type -> (config class, model class) in transformers. HuBERT really is HuBERT here.
# Named, not imported: importing transformers' models costs seconds at every CLI start,
# so it happens only when a Hugging Face frontend is built.
HF_ENCODERS: dict[str, tuple[str, str]] = {
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel"),
}


def import_transformers() -> ModuleType:
    """The transformers package, imported on first use."""
    return importlib.import_module("transformers")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without warnings and progress bars inside the block (restored after)."""
    logging = import_transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _encoder_classes(model_type: str, source: str) -> tuple[type, type]:
    if model_type not in HF_ENCODERS:
        raise ModelLoadError(
            f"{source}: model type '{model_type}' is not a supported speech encoder; "
            f"supported: {', '.join(HF_ENCODERS)}"
        )
    library = import_transformers()
    config_class, model_class = HF_ENCODERS[model_type]
    return getattr(library, config_class), getattr(library, model_class)


def _prepare_hf_config(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """Every layer must feed LAP: no LayerDrop (it repeats a layer's input), no SpecAugment."""
    config.layerdrop = 0.0
    config.apply_spec_augment = False
    config.mask_time_prob = 0.0
    config.mask_feature_prob = 0.0
    return config


class HFFrontend(Frontend):
    """A transformers speech encoder exposing all its hidden layers.

    Build it with :meth:`from_pretrained` (hub id or local directory) or :meth:`from_config`
    (random weights, e.g. for tests).

    Args:
        model: a ``WavLMModel`` / ``HubertModel`` / ``Wav2Vec2Model`` / ``Data2VecAudioModel``.
        source: where it came from (recorded in the saved config).
        freeze: frozen encoder in eval mode (stage 1).
        freeze_feature_encoder: keep the CNN frozen while fine-tuning the Transformer.
        gradient_checkpointing: trade compute for memory when fine-tuning.
        normalize_waveform: per-utterance zero-mean unit-variance over valid samples.

    Example:
        >>> import transformers
        >>> config = transformers.WavLMConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
        ...     conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
        ...     num_conv_pos_embedding_groups=2, feat_extract_norm="layer")
        >>> frontend = HFFrontend.from_config(config)
        >>> out = frontend(torch.randn(2, 4000), torch.tensor([4000, 2000]))
        >>> tuple(out.hidden_states.shape), out.lengths.tolist()
        ((2, 3, 198, 32), [198, 98])
    """

    def __init__(
        self,
        model: transformers.PreTrainedModel,
        *,
        source: str | None = None,
        freeze: bool = True,
        freeze_feature_encoder: bool = True,
        gradient_checkpointing: bool = False,
        normalize_waveform: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.source = source
        hf_config = model.config
        self.n_layers = hf_config.num_hidden_layers + 1
        self.hidden_size = hf_config.hidden_size
        self.uses_attention_mask = (
            getattr(hf_config, "feat_extract_norm", "layer") == "layer"
            and hf_config.model_type != "data2vec-audio"
        )
        self.freeze_feature_encoder = freeze_feature_encoder
        self.normalize_waveform = normalize_waveform
        self.gradient_checkpointing = False
        self.set_gradient_checkpointing(gradient_checkpointing)
        self.set_frozen(freeze)

    @classmethod
    def from_config(
        cls, hf_config: transformers.PretrainedConfig | dict[str, Any], **options: Any
    ) -> HFFrontend:
        """Randomly initialised encoder of the given architecture (config object or dict)."""
        if isinstance(hf_config, dict):
            model_type = hf_config.get("model_type", "")
            config_class, _ = _encoder_classes(model_type, "hf_config")
            hf_config = config_class.from_dict(hf_config)
        config_class, model_class = _encoder_classes(hf_config.model_type, "hf_config")
        model = model_class(_prepare_hf_config(hf_config))
        return cls(model, **options)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        normalize_waveform: bool | None = None,
        trust_pickle: bool = False,
        **options: Any,
    ) -> HFFrontend:
        """Pre-trained encoder from a hub id (e.g. ``microsoft/wavlm-base-plus``) or directory.

        Weights are read from safetensors only; a source holding only pickle weights
        (``pytorch_model.bin``) is refused unless ``trust_pickle``.
        """
        try:
            hf_config = import_transformers().AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"cannot load the speech encoder '{source}' ({error}). Without network access, "
                "download it elsewhere and pass its local directory."
            ) from error
        _, model_class = _encoder_classes(hf_config.model_type, source)
        try:
            model = model_class.from_pretrained(
                source,
                config=_prepare_hf_config(hf_config),
                use_safetensors=None if trust_pickle else True,
            )
        except OSError as error:
            if trust_pickle or "safetensors" not in str(error):
                raise ModelLoadError(
                    f"cannot load the speech encoder '{source}' ({error})"
                ) from error
            raise ModelLoadError(
                f"{source}: no safetensors weights; its pickle weights (pytorch_model.bin) are "
                "refused, as unpickling runs any code stored in the file. If you trust the "
                "source, pass trust_pickle=True (CLI: --trust-pickle)"
            ) from error
        if normalize_waveform is None:
            normalize_waveform = _reads_do_normalize(source)
        return cls(model, source=source, normalize_waveform=normalize_waveform, **options)

    def set_frozen(self, frozen: bool) -> None:
        super().set_frozen(frozen)
        if not frozen and self.freeze_feature_encoder:
            self.model.freeze_feature_encoder()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled and not self.gradient_checkpointing:
            _enable_activation_checkpointing(self.model)
        elif not enabled and self.gradient_checkpointing:
            self.model.gradient_checkpointing_disable()
        self.gradient_checkpointing = enabled

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        # transformers exposes the CNN's length arithmetic only as this underscored method
        return self.model._get_feat_extract_output_lengths(sample_lengths).long()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> FrontendOutput:
        sample_mask = torch.arange(waveforms.shape[1], device=waveforms.device) < lengths[:, None]
        if self.normalize_waveform:
            waveforms = _normalize(waveforms, sample_mask)
        frame_lengths = self.frame_lengths(lengths)
        if self.uses_attention_mask:
            hidden = self._hidden_states(waveforms, sample_mask.long())
        else:
            hidden = self._hidden_states_per_length(waveforms, lengths, int(frame_lengths.max()))
        return FrontendOutput(hidden, frame_lengths)

    def _hidden_states(
        self, waveforms: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        outputs = self.model(waveforms, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(outputs.hidden_states, dim=1)

    def _hidden_states_per_length(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, max_frames: int
    ) -> torch.Tensor:
        """Group-norm encoders: run the items of each distinct length unpadded."""
        batch = waveforms.shape[0]
        hidden = waveforms.new_zeros(batch, self.n_layers, max_frames, self.hidden_size)
        for length in torch.unique(lengths).tolist():
            rows = (lengths == length).nonzero(as_tuple=True)[0]
            states = self._hidden_states(waveforms[rows, :length], attention_mask=None)
            hidden[rows, :, : states.shape[2]] = states
        return hidden

    def config(self) -> FrontendConfig:
        return FrontendConfig(
            name="hf",
            source=self.source,
            freeze=self.frozen,
            freeze_feature_encoder=self.freeze_feature_encoder,
            gradient_checkpointing=self.gradient_checkpointing,
            normalize_waveform=self.normalize_waveform,
            hf_config=self.model.config.to_dict(),
        )


def hf_frontend_from_config(
    config: FrontendConfig, *, pretrained: bool, trust_pickle: bool = False
) -> HFFrontend:
    """Build from a FrontendConfig: the recorded architecture, or the pre-trained source."""
    options = {
        "freeze": config.freeze,
        "freeze_feature_encoder": config.freeze_feature_encoder,
        "gradient_checkpointing": config.gradient_checkpointing,
    }
    # a recorded architecture without a source (or when weights come from a saved model)
    if config.hf_config is not None and (not pretrained or config.source is None):
        return HFFrontend.from_config(
            dict(config.hf_config),
            source=config.source,
            normalize_waveform=bool(config.normalize_waveform),
            **options,
        )
    if config.source is None:
        raise ModelLoadError("frontend 'hf' needs a source: a hub id or a local directory")
    return HFFrontend.from_pretrained(
        config.source,
        normalize_waveform=config.normalize_waveform,
        trust_pickle=trust_pickle,
        **options,
    )


def _enable_activation_checkpointing(model: transformers.PreTrainedModel) -> None:
    """Non-reentrant checkpointing, under the name this transformers version uses."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _reads_do_normalize(source: str) -> bool:
    """The source's feature-extractor choice of waveform normalisation (False if absent)."""
    try:
        extractor = import_transformers().AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        return False
    return bool(getattr(extractor, "do_normalize", False))


def _normalize(waveforms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-variance per utterance over valid samples; padding stays zero."""
    weights = mask.to(waveforms.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (waveforms * weights).sum(dim=1, keepdim=True) / count
    var = ((waveforms - mean).pow(2) * weights).sum(dim=1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(var + 1e-7) * weights
