"""Numba CPU kernels of the network (stacked LSTM, Dropout, Dense, MSE): forward pass (dropout on
or off), BPTT, dropout masks, Adam.  Maths as ``keras.layers.LSTM`` (gates i, f, c, o); the oracle
is tests/lstm_core/reference.py.

``params`` = (kernel0 (n_in, 4u), wst (L, 2u, 4u): [kernel; recurrent] per layer (layer 0's kernel
half unused), bias (L, 4u), dense_w (u, H), dense_b (H,)).  A layer's inputs of all steps are
projected in one matmul: only ``recurrent_kernelᵀ @ h(t-1)`` (backwards ``recurrent_kernel @ δz``)
is on the sequential chain.  Arrays are unit-major inside (a step's state is (unit, batch)): the
weights as BLAS's left operand are faster with OpenBLAS.  Layer l's input at step t is multiplied
by ``masks[t + l, l - 1]`` (wave t + l).  float32 tanh is Eigen's and XLA's rational approximation
(σ(z) = ½·tanh(½z) + ½), which vectorises.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

_F = np.float32
# Eigen's float tanh: odd rational approximation on [-7.905, 7.905] (float32 tanh is ±1 beyond)
_CLAMP = _F(7.90531110763549805)
_A1, _A3, _A5 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), _F(1.48572235717979e-05)
_A7, _A9 = _F(5.12229709037114e-08), _F(-8.60467152213735e-11)
_A11, _A13 = _F(2.00018790482477e-13), _F(-2.76076847742355e-16)
_B0, _B2 = _F(4.89352518554385e-03), _F(2.26843463243900e-03)
_B4, _B6 = _F(1.18534705686654e-04), _F(1.19825839466702e-06)


def _tanh(x):  # pragma: no cover - only its Numba overload below runs
    raise NotImplementedError


@overload(_tanh, inline="always", jit_options={"fastmath": True, "error_model": "numpy"})
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:

        def tanh32(x):
            x = np.minimum(np.maximum(x, -_CLAMP), _CLAMP)
            x2 = x * x
            p = x2 * (x2 * (x2 * (x2 * (x2 * (x2 * _A13 + _A11) + _A9) + _A7) + _A5) + _A3) + _A1
            q = x2 * (x2 * (x2 * _B6 + _B4) + _B2) + _B0
            return x * p / q

        return tanh32
    return lambda x: np.tanh(x)


# error_model="numpy": no ZeroDivisionError branch in the loops, so they vectorise.
_JIT = {"nogil": True, "fastmath": True, "error_model": "numpy", "cache": True}
_TOP_SALT = np.uint64(0xD1B54A32D192ED03)  # the top Dropout's masks: another key, same counters


@njit(**_JIT)
def _unit_major(x):  # pragma: no cover - compiled
    """(B, T, n) -> a new (n, T·B) array: column t·B + b holds x[b, t]."""
    n_b, n_t, n = x.shape
    return x.transpose(2, 1, 0).copy().reshape(n, n_t * n_b)


@njit(**_JIT)
def stack_forward(x, kernel0, wst, bias, masks):  # pragma: no cover - compiled
    """The L LSTM layers from zero states on ``x`` (B, T, n_in), ``masks`` (T + L - 1, L - 1, B, u):
    inp (L, u, T·B), gates (L, T, 4u, B), cells, hs (L, T + 1, u, B), tanh_c (L, T, u, B)."""
    n_b, n_t, _ = x.shape
    n_l = wst.shape[0]
    u = wst.shape[2] // 4
    dt = x.dtype
    gates = np.empty((n_l, n_t, 4 * u, n_b), dt)
    cells = np.empty((n_l, n_t + 1, u, n_b), dt)
    tanh_c = np.empty((n_l, n_t, u, n_b), dt)
    hs = np.empty((n_l, n_t + 1, u, n_b), dt)
    inp = np.zeros((n_l, u, n_t * n_b), dt)
    # σ(z) = ½·tanh(½z) + ½ for i, f, o; tanh for the candidate: one tanh loop for all four
    scale = np.full(4 * u, 0.5, dt)
    shift = np.full(4 * u, 0.5, dt)
    scale[2 * u : 3 * u] = 1.0
    shift[2 * u : 3 * u] = 0.0
    for ly in range(n_l):
        hs[ly, 0] = 0.0
        cells[ly, 0] = 0.0
        rec_t = np.ascontiguousarray(wst[ly, u:].T)  # (4u, u)
        if ly == 0:
            ker_t, layer_in = np.ascontiguousarray(kernel0.T), _unit_major(x)
        else:  # the layer below's outputs times their dropout masks
            ker_t, layer_in = np.ascontiguousarray(wst[ly, :u].T), inp[ly]
            for t in range(n_t):
                src, m = hs[ly - 1, t + 1], masks[t + ly, ly - 1]
                for j in range(u):
                    dst = layer_in[j, t * n_b : (t + 1) * n_b]
                    for b in range(n_b):
                        dst[b] = src[j, b] * m[b, j]
        zin = np.dot(ker_t, layer_in)  # input projection of every step, bias included: (4u, T·B)
        for j in range(4 * u):
            zin[j] += bias[ly, j]
        for t in range(n_t):
            # (4u, B): the only matmul on the sequential chain; the weights are the left operand
            z = np.dot(rec_t, hs[ly, t])
            g = gates[ly, t]
            for j in range(4 * u):
                zr, zi, gr = z[j], zin[j, t * n_b : (t + 1) * n_b], g[j]
                sc, sh = scale[j], shift[j]
                for b in range(n_b):
                    gr[b] = _tanh((zr[b] + zi[b]) * sc) * sc + sh
            c_prev, c_new, tc, h_new = cells[ly, t], cells[ly, t + 1], tanh_c[ly, t], hs[ly, t + 1]
            for j in range(u):
                gi, gf, ga, go = g[j], g[u + j], g[2 * u + j], g[3 * u + j]
                cp, cn, tcj, hn = c_prev[j], c_new[j], tc[j], h_new[j]
                for b in range(n_b):
                    c = gf[b] * cp[b] + gi[b] * ga[b]
                    cn[b] = c
                    tcj[b] = _tanh(c)
                    hn[b] = go[b] * tcj[b]
    return inp, gates, cells, tanh_c, hs


@njit(**_JIT)
def stack_backward(x, wst, masks, saved, d_seq):  # pragma: no cover - compiled
    """BPTT through ``stack_forward`` (``saved`` its result): gradients of (kernel0, wst, bias)
    for ``d_seq`` (B, T, u), the upstream gradient of the top layer's sequence."""
    inp, gates, cells, tanh_c, hs = saved
    n_b, n_t, n_in = x.shape
    n_l = wst.shape[0]
    u = wst.shape[2] // 4
    dt = x.dtype
    d_wst = np.zeros((n_l, 2 * u, 4 * u), dt)
    d_bias = np.zeros((n_l, 4 * u), dt)
    d_kernel0 = np.zeros((n_in, 4 * u), dt)
    d_out = _unit_major(d_seq)  # (u, T·B): gradient reaching this layer's output sequence
    dz_all = np.empty((4 * u, n_t * n_b), dt)  # every step's δz, for the weight gradients
    dz = np.empty((4 * u, n_b), dt)  # this step's δz, for the recurrent matmul
    a_cat = np.empty((2 * u, n_t * n_b), dt)  # [input; h(t-1)] of every step
    one = np.ones(1, dt)[0]  # a literal 1.0 would turn float32 maths into float64
    for ly in range(n_l - 1, -1, -1):
        rec = np.ascontiguousarray(wst[ly, u:])  # (u, 4u)
        dh_rec = np.zeros((u, n_b), dt)  # what h(t) receives from step t+1
        dc_next = np.zeros((u, n_b), dt)  # δC(t+1)·f(t+1)
        for t in range(n_t - 1, -1, -1):
            g, tc, c_prev = gates[ly, t], tanh_c[ly, t], cells[ly, t]
            for j in range(u):
                gi, gf, ga, go = g[j], g[u + j], g[2 * u + j], g[3 * u + j]
                tcj, cp = tc[j], c_prev[j]
                d_o, d_r, d_c = d_out[j, t * n_b : (t + 1) * n_b], dh_rec[j], dc_next[j]
                zi, zf, za, zo = dz[j], dz[u + j], dz[2 * u + j], dz[3 * u + j]
                for b in range(n_b):
                    i_g, f_g, a_g, o_g = gi[b], gf[b], ga[b], go[b]
                    dh = d_o[b] + d_r[b]
                    dc = d_c[b] + dh * o_g * (one - tcj[b] * tcj[b])  # the tutorial's δC(t)
                    zi[b] = dc * a_g * i_g * (one - i_g)
                    zf[b] = dc * cp[b] * f_g * (one - f_g)
                    za[b] = dc * i_g * (one - a_g * a_g)
                    zo[b] = dh * tcj[b] * o_g * (one - o_g)
                    d_c[b] = dc * f_g
            dz_all[:, t * n_b : (t + 1) * n_b] = dz
            dh_rec = np.dot(rec, dz)  # (u, B)
        # weight gradients summed over steps and batch: one matmul for the layer's [kernel;
        # recurrent], computed transposed (the faster order with OpenBLAS)
        for t in range(n_t):
            a_cat[u:, t * n_b : (t + 1) * n_b] = hs[ly, t]
        for j in range(4 * u):
            d_bias[ly, j] = dz_all[j].sum()
        if ly > 0:
            a_cat[:u] = inp[ly]
            d_wst[ly] = np.dot(dz_all, a_cat.T).T
            # gradient of the layer's input, (T·B, u) (the faster layout with OpenBLAS)
            d_in = np.dot(dz_all.T, np.ascontiguousarray(wst[ly, :u].T))
            for t in range(n_t):
                for b in range(n_b):
                    src, m = d_in[t * n_b + b], masks[t + ly, ly - 1, b]
                    for j in range(u):
                        d_out[j, t * n_b + b] = src[j] * m[j]
        else:
            d_wst[0, u:] = np.dot(dz_all, a_cat[u:].T).T
            d_kernel0[:] = np.dot(_unit_major(x), dz_all.T)
    return d_kernel0, d_wst, d_bias


# splitmix64's constants: a counter-based generator, so a mask entry depends only on
# (key, index), not on which slice or thread draws it.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


@njit(inline="always", **_JIT)
def splitmix64(z):  # pragma: no cover - compiled
    """splitmix64's output for the uint64 state ``z``."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(**_JIT)
def dropout_masks(out, key, first, rate):  # pragma: no cover - compiled
    """Fill ``out`` with inverted-dropout multipliers (0 or 1 / (1 - rate)), entry k from counter
    ``first + k`` under ``key``: slices of a batch draw exactly the whole batch's masks."""
    flat = out.reshape(out.size)
    if rate == 0.0:
        flat[:] = 1.0
        return out
    keep = np.full(1, 1.0 / (1.0 - rate), out.dtype)[0]
    zero = np.zeros(1, out.dtype)[0]
    threshold = np.uint64(min(int(rate * 16777216.0), 16777216))  # 24 random bits vs rate
    base = np.uint64(key) + np.uint64(first) * _GOLDEN
    for k in range(flat.size):
        flat[k] = keep if (splitmix64(base + np.uint64(k) * _GOLDEN) >> _S40) >= threshold else zero
    return out


@njit(**_JIT)
def forward(x, params, key, row0, n_total, rate, top_rate):  # pragma: no cover - compiled
    """The network on ``x`` (B, T, n_in), rows ``row0 ..`` of a batch of ``n_total`` (rates 0: no
    dropout): the stack's masks and activations, the top h after Dropout (B, u), its mask, the
    output (B, H)."""
    kernel0, wst, bias, dense_w, dense_b = params
    n_b, n_t, _ = x.shape
    n_l = wst.shape[0]
    u = wst.shape[2] // 4
    per_wave = (n_l - 1) * n_total * u  # counters of one wave of the stack's masks
    masks = np.empty((n_t + n_l - 1, n_l - 1, n_b, u), x.dtype)
    for w in range(n_t + n_l - 1):
        for ly in range(n_l - 1):
            dropout_masks(masks[w, ly], key, w * per_wave + (ly * n_total + row0) * u, rate)
    saved = stack_forward(x, kernel0, wst, bias, masks)
    h_top = np.ascontiguousarray(saved[4][n_l - 1, n_t].T)  # hs of the top layer at T: (B, u)
    m_top = dropout_masks(np.empty_like(h_top), key ^ _TOP_SALT, row0 * u, top_rate)
    h_top = h_top * m_top
    return masks, saved, h_top, m_top, np.dot(h_top, dense_w) + dense_b


@njit(**_JIT)
def train_slice(x, y, params, key, row0, n_total, rate, top_rate, grads):  # pragma: no cover
    """``forward`` then BPTT of rows ``row0 ..`` of a batch: this slice's share of the batch MSE's
    gradient into ``grads`` (flat, ``params``' order); returns its sum of squared errors."""
    wst, dense_w = params[1], params[3]
    n_b, n_t, _ = x.shape
    u = wst.shape[2] // 4
    n_h = dense_w.shape[1]
    dt = x.dtype
    masks, saved, h_top, m_top, out = forward(x, params, key, row0, n_total, rate, top_rate)
    err = out - y  # (B, H)
    sse = float((err.astype(np.float64) ** 2).sum())
    d_y = err * np.full(1, 2.0 / (n_total * n_h), dt)[0]  # d(mean squared error)/d(output)
    d_seq = np.zeros((n_b, n_t, u), dt)
    d_seq[:, n_t - 1] = np.dot(d_y, dense_w.T.copy()) * m_top
    d_kernel0, d_wst, d_bias = stack_backward(x, wst, masks, saved, d_seq)
    d_dense_w = np.dot(h_top.T.copy(), d_y)
    parts = (d_kernel0.ravel(), d_wst.ravel(), d_bias.ravel(), d_dense_w.ravel(), d_y.sum(axis=0))
    grads[:] = np.concatenate(parts)
    return sse


@njit(**_JIT)
def adam_update(params, grads, m, v, alpha, one_minus_b1, one_minus_b2, eps):  # pragma: no cover
    """keras.optimizers.Adam's update on flat float arrays, ``grads`` (slices, n) summed into
    ``grads[0]``; ``alpha`` = lr·√(1 - β₂ᵗ) / (1 - β₁ᵗ) for this step t, as Keras has it."""
    g = grads[0]
    for s in range(1, grads.shape[0]):  # separate loops: each one vectorises
        other = grads[s]
        for i in range(g.size):
            g[i] += other[i]
    for i in range(params.size):
        m[i] += (g[i] - m[i]) * one_minus_b1
        v[i] += (g[i] * g[i] - v[i]) * one_minus_b2
        params[i] -= m[i] * alpha / (np.sqrt(v[i]) + eps)
