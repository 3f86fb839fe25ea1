"""One grouped attention module, H query heads and G key/value heads, for every model family.

Query heads are grouped contiguously: query head h uses KV head h // R, R = H / G. The R query
heads of a group are stacked as extra query rows against their one KV head, q (b, t, H, d) ->
(b, G, R*t, d), so both contractions are batched matmuls over (b, G) with K/V (b, s, G, d): K/V
are never repeated in memory, and activations and decode caches hold G heads. (MaxText's
`btgrd,bsgd->bgrts` names the same contraction; on XLA:CPU its forward ran 1.06-1.45x slower than
the merged R*t rows, benchmarks/attention_layout.py, so we keep the merged form.)

`grouping` (wgqa_jax.grouping.variants.Grouping) is the module's one grouping field:
- WGQA (`weights` "row"/"col"): all H original K/V kernels plus learnable weights `wk`, `wv`; the G
  grouped kernels are weighted sums formed on the fly. `variants.fold` bakes the weights in.
- unequal groups (AsymGQA sizes, KDGQA/DGQA key-norm allocation): each query head gathers its KV
  head (activations only).
- PGQA `attention_noise`: Gaussian noise subtracted from the logits while training.

With the `calibration` collection mutable, each module also keeps the gram sum of its K/V inputs
over the keys some query reads: the statistics the calibrated merges need
(wgqa_jax.training.calibration).

T5 uses none of the two position options (its init absorbs 1/sqrt(d), its position bias is
additive and comes from the caller); Llama sets `query_scale` = head_dim^-0.5 and `rope_theta`
(rotary embeddings, HF's rotate-half convention, applied to q in `attend` and to k in
`project_kv`, both given the token positions). No projection biases.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax.core.sharding import constrain
from wgqa_jax.grouping import kv_merge
from wgqa_jax.grouping.variants import MHA, Grouping
from wgqa_jax.models.ops import dense

NEG_INF = float(np.finfo(np.float32).min)
# The variable collection in which each module keeps the gram sum of its K/V inputs over the
# keys some query reads, when a caller makes it mutable (wgqa_jax.training.calibration); otherwise
# nothing is computed.
CALIBRATION = "calibration"


class Attention(nn.Module):
  """Attention over G = grouping.num_kv_heads(num_heads) K/V heads."""

  num_heads: int
  head_dim: int
  width: int  # of the K/V inputs and of the output
  grouping: Grouping = MHA
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  transpose_weight_grad_on_cpu: bool = True  # ops.dense
  query_scale: float = 1.0
  rope_theta: float | None = None
  # "einsum": the form below; "dot_product": jax.nn.dot_product_attention, cuDNN flash where
  # `cudnn_refusal` has no objection, else its XLA form; "cudnn": cuDNN flash (the run was
  # refused if it cannot have it); "blockwise": keys in blocks (`blockwise`). Dropout on the
  # attention weights and PGQA's noise need the weights: those steps use the einsum form, as do
  # unequal groups (the run says so: training.preflight.attention_notes).
  backend: str = "einsum"

  @property
  def num_kv_heads(self) -> int:
    return self.grouping.num_kv_heads(self.num_heads)

  @property
  def latent(self) -> bool:
    """MLA: the module caches a latent (and rotary key heads), not K/V heads."""
    return self.grouping.latent_rank is not None

  def setup(self):
    h, g, dk, d = self.num_heads, self.num_kv_heads, self.head_dim, self.width
    pdt = jnp.dtype(self.param_dtype)
    normal = nn.initializers.normal
    part = nn.with_logical_partitioning
    self.dropout = nn.Dropout(self.dropout_rate)
    # HF T5 init (so a random model trains like theirs): q absorbs the 1/sqrt(d_kv) scale.
    self.q = self.param(
      "q", part(normal((d * dk) ** -0.5), ("embed", "heads", "kv")), (d, h, dk), pdt
    )
    self.o = self.param(
      "o", part(normal((h * dk) ** -0.5), ("heads", "kv", "embed")), (h, dk, d), pdt
    )
    if self.latent:
      r, n = self.grouping.latent_rank, self.grouping.rope_heads
      self.kv_latent = self.param("latent", part(normal(d**-0.5), ("embed", "latent")), (d, r), pdt)
      up = lambda name: self.param(
        name, part(normal(r**-0.5), ("latent", "heads", "kv")), (r, h, dk), pdt
      )
      self.k_up, self.v_up = up("k_up"), up("v_up")
      if self.rope_theta is not None:
        self.q_rope = self.param(
          "q_rope",
          part(normal((d * dk) ** -0.5), ("embed", "heads", "rope_heads", "kv")),
          (d, h, n, dk),
          pdt,
        )
        self.k_rope = self.param(
          "k_rope", part(normal(d**-0.5), ("embed", "rope_heads", "kv")), (d, n, dk), pdt
        )
      return
    weighted = self.grouping.weights != "none"
    # WGQA keeps the H original heads, still trainable.
    kv_axes = ("embed", "heads", "kv") if weighted else ("embed", "kv_heads", "kv")
    kv_shape = (d, h if weighted else g, dk)
    self.k = self.param("k", part(normal(d**-0.5), kv_axes), kv_shape, pdt)
    self.v = self.param("v", part(normal(d**-0.5), kv_axes), kv_shape, pdt)
    if weighted:
      grp = self.grouping
      shape = kv_merge.wgqa_weight_shape(grp.weights, h, dk)
      axes = ("heads",) if grp.weights == "row" else ("heads", "kv")
      init = (
        nn.initializers.normal(stddev=1.0)
        if grp.weights_init == "normal"
        else nn.initializers.constant(grp.weights_init_value)
      )
      self.wk = self.param("wk", part(init, axes), shape, pdt)
      self.wv = self.param("wv", part(init, axes), shape, pdt)

  def _dense(self, x, kernel, n_in: int = 1):
    dtype = jnp.dtype(self.dtype)
    return dense(
      x.astype(dtype),
      kernel.astype(dtype),
      n_in,
      transpose_weight_grad_on_cpu=self.transpose_weight_grad_on_cpu,
    )

  def grouped_kv_kernels(self):
    """The (d_model, G, d_kv) K and V kernels the attention actually uses."""
    if self.grouping.weights == "none":
      return self.k, self.v
    g = self.num_kv_heads
    return (kv_merge.weighted_sum(self.k, self.wk, g), kv_merge.weighted_sum(self.v, self.wv, g))

  def project_kv(self, inputs_kv, positions=None):
    """(b, s, d_model) -> K, V each (b, s, G, d_kv): what a decode cache stores (K rotated when
    the module uses rotary embeddings; positions (b, s) or (s,))."""
    if self.is_mutable_collection(CALIBRATION):  # what K and V are made of (pre-rotary)
      self.put_variable(CALIBRATION, "inputs", inputs_kv)
    if self.latent:
      return self._project_latent(inputs_kv, positions)
    k_kernel, v_kernel = self.grouped_kv_kernels()
    k = self._dense(inputs_kv, k_kernel)
    if self.rope_theta is not None:
      k = rotary(k, positions, self.rope_theta)
    return k, self._dense(inputs_kv, v_kernel)

  def attend(self, inputs_q, k, v, bias, deterministic: bool, positions=None):
    """inputs_q (b, t, d_model); k, v (b, s, G, d_kv); bias broadcastable to (b, H, t, s);
    positions (b, t) or (t,) of the queries, for rotary embeddings."""
    b, t, _ = inputs_q.shape
    h, g, dk = self.num_heads, self.num_kv_heads, self.head_dim
    if self.is_mutable_collection(CALIBRATION):
      self._calibrate(bias, k.shape[:2])
    if self.latent:
      return self._attend_latent(inputs_q, k, v, bias, deterministic, positions)
    q = self._dense(inputs_q, self.q)  # (b, t, H, d_kv)
    if self.rope_theta is not None:
      q = rotary(q, positions, self.rope_theta)
    if self.query_scale != 1.0:
      q = q * jnp.asarray(self.query_scale, q.dtype)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    if self.grouping.unequal:
      return self._attend_gathered(q, k, v, bias, deterministic)
    if self.backend in ("dot_product", "cudnn") and not self._perturbed(deterministic):
      dt = k.dtype  # one dtype for q, k, v; the logits and softmax are float32 inside
      cudnn = self.backend == "cudnn" or (
        cudnn_refusal(self.dtype, dk, jax.default_backend()) is None
      )
      if bias is not None:
        # cuDNN takes the bias in the compute dtype (float32 gave NaNs: jax#32242); the mask's
        # float32 minimum would round to -inf in bfloat16, so it is clipped to bf16's first
        bias = jnp.asarray(bias, jnp.float32)
        if cudnn:
          bias = jnp.maximum(bias, float(jnp.finfo(dt).min)).astype(dt)
      out = jax.nn.dot_product_attention(
        q.astype(dt),
        k,
        v.astype(dt),
        bias=bias,
        scale=1.0,  # q carries its scale (T5: none; Llama: query_scale, applied above)
        implementation="cudnn" if cudnn else "xla",
      )
      return self._out(out)
    r, s = h // g, k.shape[1]
    q = q.reshape(b, t, g, r, dk).transpose(0, 2, 3, 1, 4).reshape(b, g, r * t, dk)  # q = (r, t)
    bias = self._bias_by_group(bias)
    if self.backend == "blockwise" and not self._perturbed(deterministic) and s > KEY_BLOCK:
      if bias is not None:  # one row per merged (R*t) query
        bias = jnp.broadcast_to(bias, (*bias.shape[:2], r, t, s)).reshape(
          -1, bias.shape[1], r * t, s
        )
      out = blockwise(q, k, v, bias, KEY_BLOCK)
      return self._out(out.reshape(b, g, r, t, dk).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dk))
    logits = jnp.einsum("bgqd,bsgd->bgqs", q, k).reshape(b, g, r, t, s).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias
    weights = self._softmax(logits, deterministic).astype(v.dtype).reshape(b, g, r * t, s)
    out = jnp.einsum("bgqs,bsgd->bgqd", weights, v)
    return self._out(out.reshape(b, g, r, t, dk).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dk))

  # ---- MLA ----
  def _project_latent(self, inputs_kv, positions):
    """(b, s, d_model) -> the latent (b, s, r) and the rotary key heads (b, s, rope_heads,
    d_kv), rotated (without rotary embeddings: (b, s, 0, d_kv)): what an MLA cache stores."""
    c = self._dense(inputs_kv, self.kv_latent)
    if self.rope_theta is None:
      return c, jnp.zeros((*c.shape[:2], 0, self.head_dim), c.dtype)
    return c, rotary(self._dense(inputs_kv, self.k_rope), positions, self.rope_theta)

  def _attend_latent(self, inputs_q, c, k_rope, bias, deterministic, positions):
    """MLA: c (b, s, r) the latent, k_rope (b, s, n, d_kv). Keys and values are c k_up and
    c v_up; the queries read them either so ("expanded": K/V up-projected once per key), or
    with k_up absorbed into the queries and v_up into the output ("absorbed", DeepSeek's:
    logits and weighted sums on the latent itself). Equal up to rounding; each call takes the
    one with fewer multiply-adds for its shapes: absorbed when few queries read many keys
    (decoding), expanded when as many queries as keys (training)."""
    b, t, _ = inputs_q.shape
    s, r = c.shape[1], c.shape[2]
    h, dk = self.num_heads, self.head_dim
    dt = jnp.dtype(self.dtype)
    scale = jnp.asarray(self.query_scale, dt)
    q = self._dense(inputs_q, self.q) * scale  # (b, t, H, d_kv), no rotation
    k_up, v_up = self.k_up.astype(dt), self.v_up.astype(dt)
    absorbed = t * r * (dk + s) < s * dk * (r + t)
    if absorbed:
      ql = jnp.einsum("bthd,rhd->bthr", q, k_up)
      logits = jnp.einsum("bthr,bsr->bhts", ql, c.astype(dt))
    else:
      k = jnp.einsum("bsr,rhd->bshd", c.astype(dt), k_up)
      logits = jnp.einsum("bthd,bshd->bhts", q, k)
    logits = logits.astype(jnp.float32)
    if self.rope_theta is not None:
      qr = self._dense(inputs_q, self.q_rope) * scale  # (b, t, H, n, d_kv)
      n = qr.shape[3]
      qr = rotary(qr.reshape(b, t, h * n, dk), positions, self.rope_theta).reshape(b, t, h, n, dk)
      logits = logits + jnp.einsum("bthnd,bsnd->bhts", qr, k_rope.astype(dt)).astype(jnp.float32)
    if bias is not None:
      logits = logits + jnp.asarray(bias, jnp.float32)
    weights = self._softmax(logits, deterministic).astype(dt)
    if absorbed:
      out = jnp.einsum("bthr,rhd->bthd", jnp.einsum("bhts,bsr->bthr", weights, c.astype(dt)), v_up)
    else:
      out = jnp.einsum("bhts,bshd->bthd", weights, jnp.einsum("bsr,rhd->bshd", c.astype(dt), v_up))
    return self._out(out)

  def _calibrate(self, bias, key_shape):
    """Replace the K/V inputs project_kv kept by their gram sum x x^T over the keys some query
    reads (padding does not count) and that count: (d, d) per module, whatever the batch, so
    no module's inputs outlive its attention."""
    read = (
      jnp.ones((1, key_shape[1]), bool)
      if bias is None
      else jnp.any(jnp.asarray(bias) > NEG_INF / 2, axis=(1, 2))
    )
    m = jnp.broadcast_to(read, key_shape).astype(jnp.float32)
    x = self.get_variable(CALIBRATION, "inputs").astype(jnp.float32)
    self.put_variable(CALIBRATION, "inputs", jnp.zeros((), jnp.float32))
    self.put_variable(CALIBRATION, "gram", jnp.einsum("bsd,bs,bse->de", x, m, x))
    self.put_variable(CALIBRATION, "tokens", m.sum())

  def _bias_by_group(self, bias):
    """bias (b|1, H|1, t|1, s) as float32 (b|1, G|1, R|1, t|1, s), or None."""
    if bias is None:
      return None
    h, g = self.num_heads, self.num_kv_heads
    bias = jnp.asarray(bias, jnp.float32)
    return bias.reshape(
      bias.shape[0], *((g, h // g) if bias.shape[1] == h else (1, 1)), *bias.shape[-2:]
    )

  def _perturbed(self, deterministic: bool) -> bool:
    """Whether this call changes the attention weights at random (dropout, PGQA noise)."""
    return not deterministic and (self.dropout_rate > 0 or self.grouping.attention_noise > 0)

  def _softmax(self, logits, deterministic):
    if self.grouping.attention_noise > 0 and not deterministic:
      # PGQA: perturb the attention maps of the grouped modules while uptraining.
      noise = jax.random.normal(self.make_rng("dropout"), logits.shape)
      logits = logits - self.grouping.attention_noise * noise
    weights = jax.nn.softmax(logits, axis=-1)
    return self.dropout(weights, deterministic=deterministic)

  def _out(self, out):
    out = constrain(out, ("batch", "length", "heads", "kv"))
    return self._dense(out, self.o, n_in=2)

  def kv_index(self, k):
    """(H,) or (b, H) KV head of each query head, for unequal / dynamic groups."""
    grp, h = self.grouping, self.num_heads
    if grp.allocation == "static":
      return jnp.asarray(grp.kv_index(h))
    if grp.allocation == "key_norm":  # KDGQA: this forward pass's keys, per example
      norms = jnp.sqrt(jnp.sum(jnp.square(k.astype(jnp.float32)), axis=(1, 3)))  # (b, G)
    else:  # DGQA: the K kernels, which move as uptraining goes on
      norms = jnp.sqrt(jnp.sum(jnp.square(self.grouped_kv_kernels()[0]), axis=(0, 2)))  # (G,)
    counts = kv_merge.allocate_queries(jax.lax.stop_gradient(norms), h)
    return kv_merge.kv_index_from_counts(counts, h)

  def _attend_gathered(self, q, k, v, bias, deterministic):
    """Unequal groups: gather each query head's KV head (activations only; caches keep G)."""
    idx = jnp.broadcast_to(self.kv_index(k), (q.shape[0], q.shape[2]))[:, None, :, None]
    kq, vq = jnp.take_along_axis(k, idx, axis=2), jnp.take_along_axis(v, idx, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, kq).astype(jnp.float32)
    if bias is not None:
      logits = logits + jnp.asarray(bias, jnp.float32)
    weights = self._softmax(logits, deterministic)
    out = jnp.einsum("bhts,bshd->bthd", weights.astype(q.dtype), vq)
    return self._out(out)

  def __call__(self, inputs_q, inputs_kv, bias, deterministic: bool = True, positions=None):
    k, v = self.project_kv(inputs_kv, positions)
    return self.attend(inputs_q, k, v, bias, deterministic, positions)


def cache_slots(grouping: Grouping, num_heads: int, head_dim: int, rotary: bool):
  """The shapes one token's entries take in a module's decode cache, past (batch, length): the
  two arrays project_kv returns. K/V heads: (G, d_kv) each; MLA: the latent (r,) and the
  rotary key heads (rope_heads, d_kv) ((0, d_kv) without rotary keys)."""
  if grouping.latent_rank is not None:
    return (grouping.latent_rank,), (grouping.rope_heads if rotary else 0, head_dim)
  g = grouping.num_kv_heads(num_heads)
  return (g, head_dim), (g, head_dim)


def cache_width(grouping: Grouping, num_heads: int, head_dim: int, rotary: bool) -> int:
  """Numbers one token puts in a module's decode cache (cache_slots' entries, together): 2 G
  d_kv for K/V heads; MLA: its rank plus the rotary key heads' rope_heads x d_kv."""
  return sum(math.prod(shape) for shape in cache_slots(grouping, num_heads, head_dim, rotary))


KEY_BLOCK = 512  # keys per block of the blockwise form (shorter key sequences use einsum)
QUERY_BLOCK = 2048  # query rows (R x t merged) per chunk of the blockwise form


def cudnn_refusal(dtype: str, head_dim: int, platform: str) -> str | None:
  """Why cuDNN flash attention (jax.nn.dot_product_attention's "cudnn") cannot run a model of
  this compute dtype and head size on `platform` (jax.default_backend()); None: it can. The
  fallback rule of attention="dot_product": cuDNN when this is None, its XLA form otherwise."""
  if platform != "gpu":
    return f"cuDNN flash attention runs on NVIDIA GPUs; these devices are {platform}"
  if dtype not in ("bfloat16", "float16"):
    return f"cuDNN flash attention computes in bfloat16 or float16, not {dtype} (model.dtype)"
  if head_dim % 8 or head_dim > 128:
    return f"cuDNN flash attention takes heads of a multiple of 8 up to 128 dims, not {head_dim}"
  return None


def blockwise(q, k, v, bias, block: int):
  """softmax(q k^T + bias) v without a (rows, keys) logits array for all keys: the keys in
  blocks, a running max and sum per row (the online softmax of flash attention), each block
  recomputed in the backward pass (jax.checkpoint); the rows in chunks of QUERY_BLOCK, each
  chunk recomputed likewise, so a block's logits are (chunk, block). q (b, G, n, d); k, v
  (b, s, G, d); bias (b|1, G|1, n|1, s) float32 or None. Returns (b, G, n, d) in v's dtype."""
  b, g, n, d = q.shape
  s = k.shape[1]
  pad = -s % block
  if pad:  # padded keys get NEG_INF: they weigh nothing
    k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if bias is None:
      bias = jnp.zeros((1, 1, 1, s), jnp.float32)
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, pad)), constant_values=NEG_INF)
  blocks = (s + pad) // block
  kb = k.reshape(b, blocks, block, g, d).swapaxes(0, 1)
  vb = v.reshape(b, blocks, block, g, d).swapaxes(0, 1)
  key_blocks = lambda x: x.reshape(*x.shape[:3], blocks, block).transpose(3, 0, 1, 2, 4)
  if n <= QUERY_BLOCK:
    return _over_key_blocks(q, kb, vb, None if bias is None else key_blocks(bias))
  rows_pad = -n % QUERY_BLOCK
  chunks = (n + rows_pad) // QUERY_BLOCK
  split = lambda x: jnp.moveaxis(
    jnp.pad(x, ((0, 0), (0, 0), (0, rows_pad), *[(0, 0)] * (x.ndim - 3))).reshape(
      *x.shape[:2], chunks, QUERY_BLOCK, *x.shape[3:]
    ),
    2,
    0,
  )
  per_row = bias is not None and bias.shape[2] == n
  shared = None if bias is None or per_row else key_blocks(bias)  # one row for all

  @jax.checkpoint
  def chunk(xs):
    qc, bc = xs
    return _over_key_blocks(qc, kb, vb, key_blocks(bc) if per_row else shared)

  out = jax.lax.map(chunk, (split(q), split(bias) if per_row else None))
  return jnp.moveaxis(out, 0, 2).reshape(b, g, n + rows_pad, d)[:, :, :n]


def _over_key_blocks(q, kb, vb, bb):
  """blockwise for one chunk of rows: kb, vb (blocks, b, block, G, d); bb (blocks, b|1, G|1,
  n|1, block) or None."""
  b, g, n, d = q.shape

  @jax.checkpoint
  def step(carry, xs):
    m, l, acc = carry
    kj, vj, bj = xs
    logits = jnp.einsum("bgnd,bsgd->bgns", q, kj).astype(jnp.float32)
    if bj is not None:
      logits = logits + bj
    m_new = jnp.maximum(m, logits.max(-1))
    p = jnp.exp(logits - m_new[..., None])
    scale = jnp.exp(m - m_new)
    l_new = l * scale + p.sum(-1)
    acc_new = acc * scale[..., None] + jnp.einsum("bgns,bsgd->bgnd", p.astype(vj.dtype), vj).astype(
      jnp.float32
    )
    return (m_new, l_new, acc_new), None

  init = (
    jnp.full((b, g, n), NEG_INF, jnp.float32),
    jnp.zeros((b, g, n), jnp.float32),
    jnp.zeros((b, g, n, d), jnp.float32),
  )
  (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, bb))
  return (acc / l[..., None]).astype(vb.dtype)


def rotary(x, positions, theta: float):
  """Rotary position embedding, HF's rotate-half convention: x (b, t, heads, d) at positions
  (b, t) or (t,); computed in float32. Linear and the same for every head, so it commutes with
  mean-pooling or weighting K kernels into groups."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  pos = jnp.asarray(positions, jnp.float32)
  angles = pos[..., None] * inv_freq  # (b|, t, d/2)
  angles = jnp.concatenate([angles, angles], axis=-1)
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if pos.ndim == 1:
    cos, sin = cos[None], sin[None]
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  xf = x.astype(jnp.float32)
  half = d // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)
