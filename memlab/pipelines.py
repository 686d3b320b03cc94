"""Text-to-image pipeline architectures as plain config data (a registry, like open_clip's), and the
real CLIP tokenizer rebuilt offline from open_clip's bundled BPE vocabulary.

``make_pipeline(name)`` builds a ``StableDiffusionPipeline`` with freshly initialised components
from a named config: ``tiny`` (tests; ``tiny-v2`` in Stable Diffusion 2's shape), ``world`` (the built-in world: 64x64 pixels, factor-4 VAE),
``world-attn16`` (the same with cross-attention at the latents' resolution too) and ``sd-v1-4`` (Stable
Diffusion v1.4's published architecture, random weights: the compute of the real model for benchmarks).
Save it with ``save_pretrained`` and load it with the same code as a Hub model
(``memlab.generate.Generator.from_pretrained``).
"""
from __future__ import annotations

import copy
import gzip
from functools import lru_cache

PIPELINE_CONFIGS: dict[str, dict] = {
    "tiny": {
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                     block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                     attention_head_dim=4, norm_num_groups=8),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    layers_per_block=1, norm_num_groups=8, sample_size=16),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=77, projection_dim=32),
    },
    "world": {  # 64x64 pixels, factor-4 VAE (16x16x4 latents); ~0.7 s per batch-32 step on 2 cores
        "unet": dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                     block_out_channels=(64, 128, 128),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                    layers_per_block=1, norm_num_groups=8, sample_size=64, mid_block_add_attention=False),
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=77, projection_dim=64),
    },
    "sd-v1-4": {  # CompVis/stable-diffusion-v1-4's published configs
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=2, norm_num_groups=32, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
    },
}
# The world's model with cross-attention in every block, the latents' 16 x 16 included, where SD v1's down block 0
# reads the prompt at its latents' resolution (issue 32: whether a bright ending needs a map that fine)
PIPELINE_CONFIGS["world-attn16"] = {
    **PIPELINE_CONFIGS["world"],
    "unet": dict(PIPELINE_CONFIGS["world"]["unet"], down_block_types=("CrossAttnDownBlock2D",) * 3,
                 up_block_types=("CrossAttnUpBlock2D",) * 3)}
# Stable Diffusion 2's shape at the tiny config's size (stabilityai/stable-diffusion-2-1's published configs): the
# UNet predicts v (v-prediction), its transformers project linearly with a head size per block, the text encoder's
# activation is GELU and the tokenizer pads with "!" (id 0), not the end token as SD v1's does
PIPELINE_CONFIGS["tiny-v2"] = {
    **PIPELINE_CONFIGS["tiny"],
    "unet": dict(PIPELINE_CONFIGS["tiny"]["unet"], use_linear_projection=True, attention_head_dim=(2, 4)),
    "text": dict(PIPELINE_CONFIGS["tiny"]["text"], hidden_act="gelu"),
    "scheduler": {"prediction_type": "v_prediction"}, "pad_token": "!"}
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@lru_cache(maxsize=1)
def _bpe_vocab_and_merges():
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP tokenizer (49408 entries, ids identical to open_clip's), built offline; SD v1 pads with the
    end token, SD 2 with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77,
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         pad_token=pad_token, unk_token="<|endoftext|>")


def pipeline_config(name: str) -> dict:
    from .errors import MemlabError

    if name not in PIPELINE_CONFIGS:
        raise MemlabError(f"unknown pipeline config {name!r}; known: {', '.join(PIPELINE_CONFIGS)}")
    return copy.deepcopy(PIPELINE_CONFIGS[name])


def make_pipeline(name: str = "tiny", seed: int = 0, config: dict | None = None):
    """A StableDiffusionPipeline with freshly initialised components from a named config."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = config or pipeline_config(name)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg["vae"])
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(cfg.get("pad_token", "<|endoftext|>"))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=tokenizer.pad_token_id, **cfg["text"]))
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER, **cfg.get("scheduler", {})),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
