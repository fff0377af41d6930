"""The Numba kernels on their own (NumPy in, NumPy out) against the tutorial's NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lstm_core import reference as ref

pytest.importorskip("numba")

from lstm_core.engine.kernels import (  # noqa: E402
    dropout_masks,
    forward,
    stack_backward,
    stack_forward,
)

N_IN, UNITS, LAYERS, BATCH, STEPS = 2, 4, 3, 3, 7


def _weights(dtype=np.float64):
    """Keras-layout weights per layer, and the kernels' packed (kernel0, wst, bias)."""
    rng = np.random.default_rng(11)
    per_layer = []
    for i in range(LAYERS):
        n_in = N_IN if i == 0 else UNITS
        per_layer.append(
            [
                rng.uniform(-0.6, 0.6, s)
                for s in ((n_in, 4 * UNITS), (UNITS, 4 * UNITS), (4 * UNITS,))
            ]  # fmt: skip
        )
    kernel0 = per_layer[0][0]
    wst = np.stack([
        np.concatenate([np.zeros((UNITS, 4 * UNITS)) if i == 0 else k, r])
        for i, (k, r, _) in enumerate(per_layer)
    ])  # fmt: skip
    bias = np.stack([b for _, _, b in per_layer])
    packed = tuple(a.astype(dtype) for a in (kernel0, wst, bias))
    return per_layer, packed


def _no_masks(dtype=np.float64):
    return np.ones((STEPS + LAYERS - 1, LAYERS - 1, BATCH, UNITS), dtype)


def _top(saved):
    """The top layer's h (B, T, u) from stack_forward's saved hs (L, T + 1, u, B)."""
    return saved[4][-1, 1:].transpose(2, 0, 1)


def test_forward_and_bptt_equal_the_reference_layer_by_layer():
    per_layer, (kernel0, wst, bias) = _weights()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, STEPS, N_IN))
    d_seq = rng.normal(size=(BATCH, STEPS, UNITS))
    saved = stack_forward(x, kernel0, wst, bias, _no_masks())
    params = [ref.from_keras_weights(*w) for w in per_layer]
    caches, h = [], x
    for p in params:
        caches.append(ref.forward(p, h))
        h = caches[-1].h
    np.testing.assert_allclose(_top(saved), h, atol=1e-12)

    d_kernel0, d_wst, d_bias = stack_backward(x, wst, _no_masks(), saved, d_seq)
    upstream = d_seq
    for i in reversed(range(LAYERS)):
        grads = ref.backward(params[i], caches[i], dh_seq=upstream)
        d_k, d_r, d_b = ref.to_keras_weights(grads)[:3]
        np.testing.assert_allclose(d_wst[i, UNITS:], d_r, atol=1e-10)
        np.testing.assert_allclose(d_bias[i], d_b, atol=1e-10)
        if i > 0:
            np.testing.assert_allclose(d_wst[i, :UNITS], d_k, atol=1e-10)
        else:
            np.testing.assert_allclose(d_kernel0, d_k, atol=1e-10)
        upstream = grads.dx
    assert not d_wst[0, :UNITS].any()  # layer 0's unused input half gets no gradient


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_without_dropout_is_the_reference_network(dtype):
    per_layer, packed = _weights(dtype)
    x = np.random.default_rng(4).normal(size=(BATCH, STEPS, N_IN)).astype(dtype)
    h = x.astype(np.float64)
    for w in per_layer:
        h = ref.forward(ref.from_keras_weights(*w), h).h
    identity = (np.eye(UNITS, dtype=dtype), np.zeros(UNITS, dtype))  # Dense passing h through
    masks, _, _, m_top, pred = forward(x, (*packed, *identity), np.uint64(9), 0, BATCH, 0.0, 0.0)
    assert (masks == 1).all() and (m_top == 1).all()
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(pred, h[:, -1], atol=tol)


def test_masks_multiply_each_layers_input_at_wave_t_plus_layer():
    _, (kernel0, wst, bias) = _weights()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH, STEPS, N_IN))
    masks = (rng.random((STEPS + LAYERS - 1, LAYERS - 1, BATCH, UNITS)) > 0.3) / 0.7
    inp, _, _, _, hs = stack_forward(x, kernel0, wst, bias, masks)
    # saved unit-major: inp (L, u, T·B), hs (L, T + 1, u, B)
    for layer in range(1, LAYERS):
        for t in range(STEPS):
            np.testing.assert_array_equal(
                inp[layer][:, t * BATCH : (t + 1) * BATCH],
                hs[layer - 1, t + 1] * masks[t + layer, layer - 1].T,
            )


def test_float32_rational_tanh_stays_within_float32_noise_of_float64():
    _, packed64 = _weights()
    _, packed32 = _weights(np.float32)
    x = np.random.default_rng(2).normal(size=(BATCH, STEPS, N_IN))
    top64 = _top(stack_forward(x, *packed64, _no_masks()))
    top32 = _top(stack_forward(x.astype(np.float32), *packed32, _no_masks(np.float32)))
    assert top32.dtype == np.float32
    np.testing.assert_allclose(top32, top64, atol=2e-6)


def test_forward_draws_the_masks_of_its_rows_in_the_whole_batch():
    """Rows lo..hi of a batch (a slice in training, a chunk in inference)
    get the masks of those rows in the whole batch."""
    _, (kernel0, wst, bias) = _weights()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(BATCH, STEPS, N_IN))
    dense_w, dense_b = rng.normal(size=(UNITS, 2)), rng.normal(size=2)
    key, rate, top_rate = np.uint64(99), 0.3, 0.4
    per_wave = (LAYERS - 1) * BATCH * UNITS
    masks = np.empty((STEPS + LAYERS - 1, LAYERS - 1, BATCH, UNITS))
    for w in range(STEPS + LAYERS - 1):
        for ly in range(LAYERS - 1):
            dropout_masks(masks[w, ly], key, w * per_wave + ly * BATCH * UNITS, rate)
    top = _top(stack_forward(x, kernel0, wst, bias, masks))[:, -1]
    m_top = dropout_masks(np.empty((BATCH, UNITS)), key ^ np.uint64(0xD1B54A32D192ED03), 0,
                          top_rate)  # fmt: skip
    expected = (top * m_top) @ dense_w + dense_b
    params = (kernel0, wst, bias, dense_w, dense_b)
    whole = forward(x, params, key, 0, BATCH, rate, top_rate)
    np.testing.assert_array_equal(whole[0], masks)
    np.testing.assert_array_equal(whole[3], m_top)
    np.testing.assert_allclose(whole[-1], expected, atol=1e-12)
    parts = [
        forward(x[lo:hi], params, key, lo, BATCH, rate, top_rate)[-1]
        for lo, hi in ((0, 1), (1, BATCH))
    ]
    np.testing.assert_allclose(np.concatenate(parts), expected, atol=1e-12)
    plain = forward(x, params, key, 0, BATCH, 0.0, 0.0)[-1]
    assert np.abs(plain - expected).max() > 1e-3  # dropout did change the output
