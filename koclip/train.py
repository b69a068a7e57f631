"""Contrastive fine-tuning math for KoCLIP: the loss, the optimiser and a jitted train step.

As KoCLIP's own training (transformers' Flax `run_hybrid_clip.py`, after CLIP): symmetric
cross-entropy over the in-batch similarity matrix scaled by a learnable `logit_scale`, AdamW
with linear warmup then linear decay to zero. Optionally one tower is frozen (LiT-style: the
tower and its projection keep their weights, so its embeddings do not move). No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from koclip.checkpoints.params import TOWER_KEYS
from koclip.config import KoCLIPConfig
from koclip.model import KoCLIPModule, logits
from koclip.tokenizer import pad_ids

Tower = Literal["text", "vision"]
Params = dict[str, Any]
Batch = Mapping[str, Any]
TrainStep = Callable[[Params, Any, Batch], tuple[Params, Any, dict[str, jax.Array]]]

# CLIP clamps the learned temperature so logits never exceed 100 (training goes unstable past it).
MAX_LOGIT_SCALE = math.log(100.0)
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")


def contrastive_loss(
    text_embeds: jax.Array, image_embeds: jax.Array, logit_scale: jax.Array
) -> jax.Array:
    """Symmetric InfoNCE: row i of each side matches row i of the other, every other row is a negative."""
    per_text, per_image = logits(text_embeds, image_embeds, logit_scale)
    labels = jnp.arange(per_text.shape[0])
    text_loss = optax.softmax_cross_entropy_with_integer_labels(per_text, labels).mean()
    image_loss = optax.softmax_cross_entropy_with_integer_labels(per_image, labels).mean()
    return (text_loss + image_loss) / 2


def warmup_steps_for(warmup: float, total_steps: int) -> int:
    """`warmup` below 1 is a fraction of `total_steps`, otherwise a step count."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, not {warmup}")
    steps = round(warmup * total_steps) if warmup < 1 else int(warmup)
    return min(steps, total_steps)


def lr_schedule(learning_rate: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then linear decay to 0 at `total_steps`."""
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params: Params) -> Params:
    """Weight decay on matrices and embeddings only: not on biases, LayerNorms or logit_scale."""
    return jax.tree_util.tree_map(lambda p: np.ndim(p) >= 2, params)


def param_labels(params: Params, freeze: Tower | None) -> Params:
    """'frozen' for every leaf of the frozen tower (and its projection), 'train' elsewhere."""
    frozen = TOWER_KEYS[freeze] if freeze else ()
    return {
        key: jax.tree_util.tree_map(lambda _, k=key: "frozen" if k in frozen else "train", value)
        for key, value in params.items()
    }


def make_optimizer(
    params: Params,
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    weight_decay: float = 0.1,
    freeze: Tower | None = None,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW (CLIP's betas) with the warmup/decay schedule; a frozen tower gets no update nor state."""
    if freeze is not None and freeze not in TOWER_KEYS:
        raise ValueError(f"freeze must be 'text', 'vision' or None, not {freeze!r}")
    schedule = lr_schedule(learning_rate, total_steps, warmup_steps)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    train = optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw) if max_grad_norm else adamw
    return optax.multi_transform(
        {"train": train, "frozen": optax.set_to_zero()}, param_labels(params, freeze)
    )


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of a whole pytree (optax renames its own between versions)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def _stop_frozen(params: Params, freeze: Tower | None) -> Params:
    if freeze is None:
        return params
    frozen = TOWER_KEYS[freeze]
    # Constants to autodiff: no backward pass through the frozen tower at all.
    return {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}


def make_loss_fn(config: KoCLIPConfig, freeze: Tower | None = None) -> Callable[..., jax.Array]:
    """`loss(params, batch)`: the contrastive loss of one batch (see `BATCH_KEYS`)."""
    module = KoCLIPModule(config)

    def loss(params: Params, batch: Batch) -> jax.Array:
        text, image, scale = module.apply(
            {"params": _stop_frozen(params, freeze)},
            batch["input_ids"],
            batch["pixel_values"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch["position_ids"],
        )
        return contrastive_loss(text, image, scale)

    return loss


def make_train_step(
    config: KoCLIPConfig, optimizer: optax.GradientTransformation, freeze: Tower | None = None
) -> TrainStep:
    """A jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    `params` and `opt_state` are donated: pass the returned ones to the next call. Metrics are
    the batch loss, the gradient's global norm and the (clamped) logit_scale after the update.
    """
    loss_fn = make_loss_fn(config, freeze)

    def step(params: Params, opt_state: Any, batch: Batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
        metrics = {
            "loss": loss,
            "grad_norm": global_norm(grads),
            "logit_scale": params["logit_scale"],
        }
        return params, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


def text_batch(ids_list: list[list[int]], max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Token id lists -> fixed-length (n, max_length) int32 arrays, positions 0..L-1 (KoCLIP's)."""
    ids, mask = pad_ids(ids_list, pad_id, max_length)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "position_ids": np.broadcast_to(np.arange(max_length, dtype=np.int32), ids.shape).copy(),
    }
