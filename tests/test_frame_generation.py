"""The stop-token generation loop with a scripted model: every item stops on its own frame."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.decoding.frames import generate_frames

R, MELS, MAX_STEPS = 3, 2, 5


def _scripted(stop_frame: np.ndarray, p_stop: np.ndarray):
    """A step_fn whose frame k of item b is (b, k) + the previous frame's second value, and
    whose stop probability is p_stop[b] at frame stop_frame[b], 0.1 elsewhere."""

    def step_fn(prev, cache, step):
        k = step * R + jnp.arange(R)  # [r] frame indices of this step
        b = jnp.arange(len(stop_frame))[:, None]  # [batch, 1]
        frames = jnp.stack(
            [jnp.broadcast_to(b, (len(stop_frame), R)), k[None] + prev[:, 1:2]], axis=-1
        ).astype(jnp.float32)  # [batch, r, 2]
        probs = jnp.where(k[None] == stop_frame[:, None], p_stop[:, None], 0.1)  # [batch, r]
        aux = jnp.full((len(stop_frame), 1), step, jnp.float32)
        return frames, probs, aux, cache + 1

    return step_fn


def _run(stop_frame, p_stop, threshold=0.5):
    return jax.jit(
        lambda: generate_frames(
            _scripted(jnp.asarray(stop_frame), jnp.asarray(p_stop, jnp.float32)),
            jnp.zeros((), jnp.int32),
            batch=len(stop_frame),
            n_mels=MELS,
            reduction_factor=R,
            aux_shape=(1,),
            max_steps=MAX_STEPS,
            threshold=threshold,
        )
    )()


def test_each_item_stops_at_its_first_frame_over_the_threshold():
    # item 0: p = 0.9 at frame 4 (step 1); item 1: p = 0.5 exactly at frame 0 (>= stops);
    # item 2: p = 0.49 (never stops); item 3: p = 0.7 at frame 8 (the last of step 2).
    out = _run([4, 0, 6, 8], [0.9, 0.5, 0.49, 0.7])
    np.testing.assert_array_equal(out.lengths, [5, 1, MAX_STEPS * R, 9])
    np.testing.assert_array_equal(out.stopped, [True, True, False, True])
    assert int(out.steps) == MAX_STEPS  # item 2 kept the loop going to the limit
    frames = np.asarray(out.frames)
    # Frames up to each length are the model's, with the previous step's last frame fed back:
    # frame k holds k + (sum of the last frame indices of earlier steps).
    for b, n in enumerate(np.asarray(out.lengths)):
        carried = 0.0
        for step in range(-(-n // R)):
            for j in range(R):
                k = step * R + j
                if k < n:
                    assert frames[b, k, 0] == b and frames[b, k, 1] == k + carried
            carried = step * R + R - 1 + carried
        assert not frames[b, n:].any(), "frames after the stop frame are zero"
    aux = np.asarray(out.aux)[..., 0]
    np.testing.assert_array_equal(aux[0], [0, 1, 0, 0, 0])  # recorded while live only
    np.testing.assert_array_equal(aux[2], [0, 1, 2, 3, 4])


def test_loop_exits_when_every_item_stopped():
    out = _run([2, 4], [0.8, 0.8])
    np.testing.assert_array_equal(out.lengths, [3, 5])
    assert int(out.steps) == 2 and bool(np.all(out.stopped))


def test_threshold_is_configurable():
    high = _run([1], [0.8], threshold=0.9)
    assert not bool(high.stopped[0]) and int(high.lengths[0]) == MAX_STEPS * R
    low = _run([1], [0.8], threshold=0.8)
    assert bool(low.stopped[0]) and int(low.lengths[0]) == 2
