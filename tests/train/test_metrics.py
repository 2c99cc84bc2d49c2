"""Run-directory metrics: metrics.jsonl keeps every value, TensorBoard only the ones it can draw."""

import logging

from scalelab.train.metrics import MetricsWriter, read_metrics


def test_non_finite_values_stay_in_the_jsonl_and_stay_out_of_tensorboard(tmp_path, caplog):
    writer = MetricsWriter(tmp_path)
    with caplog.at_level(logging.WARNING):
        writer.write({"step": 0, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3, "skipped": True})
        writer.close()
    assert read_metrics(tmp_path) == [{"step": 0, "loss": "nan", "grad_norm": "inf", "lr": 1e-3, "skipped": True}]
    assert not [r for r in caplog.records if r.name.startswith("tensorboardX")]
