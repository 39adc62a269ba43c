"""The repetition early-stop rule every sampler applies."""

from cispo.rollout.repetition import repetition_stop_index


def test_repetition_stop_index():
    probs = [0.5, 0.995, 0.999, 0.3, 0.995, 0.999, 0.9999, 0.2]
    assert repetition_stop_index(probs, window=3) == 7  # run at indices 4, 5, 6 → keep tokens[:7]
    assert repetition_stop_index(probs, window=2) == 3
    assert repetition_stop_index(probs, window=4) is None
    assert repetition_stop_index(probs, window=0) is None
    assert repetition_stop_index([0.99] * 5, window=2) is None  # strictly greater than the threshold
    assert repetition_stop_index([0.99] * 5, window=2, threshold=0.98) == 2
    assert repetition_stop_index([0.999] * 4, window=4) == 4
