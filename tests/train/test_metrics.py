"""Run-directory metrics: metrics.jsonl keeps every value, TensorBoard only the ones it can draw."""

import logging

from scalelab.train.metrics import METRICS_FILE, MetricsWriter, read_metrics, steps_logged


def test_non_finite_values_stay_in_the_jsonl_and_stay_out_of_tensorboard(tmp_path, caplog):
    writer = MetricsWriter(tmp_path)
    with caplog.at_level(logging.WARNING):
        writer.write({"step": 0, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3, "skipped": True})
        writer.close()
    assert read_metrics(tmp_path) == [{"step": 0, "loss": "nan", "grad_norm": "inf", "lr": 1e-3, "skipped": True}]
    assert not [r for r in caplog.records if r.name.startswith("tensorboardX")]


def test_steps_logged_reads_the_newest_train_line_and_skips_one_being_written(tmp_path):
    assert steps_logged(tmp_path) == 0  # no metrics yet
    lines = ['{"step": 0, "loss": 5.0}', '{"step": 4, "loss": 4.0}', '{"step": 4, "eval_loss": 4.1}', '{"step": 9, "lo']
    (tmp_path / METRICS_FILE).write_text("\n".join(lines))
    assert steps_logged(tmp_path) == 5  # step 4 is the model after 5 updates; eval lines and a torn line do not count
