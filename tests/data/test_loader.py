"""The step-indexed loader: pure in (seed, step), partitioned across hosts, prefetched, wired in."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from scalelab.cli import main
from scalelab.data import make_source
from scalelab.data.builder import prepare_dataset
from scalelab.data.loader import TfdsSource, shuffled_rows
from scalelab.data.reader import TextSplit, require_dataset
from scalelab.data.storage import DataError
from scalelab.data.tokenizer import min_vocab_size
from scalelab.data.tokens import build_store, find_store, open_store
from tests.data.conftest import SENTINELS, VOCAB, make_cfg, make_documents

REPO = Path(__file__).resolve().parents[2]  # the repo root: tests/data/<file>


def with_data(cfg, **changes):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def digest(batch: dict) -> str:
    return hashlib.sha256(b"".join(batch[k].tobytes() for k in sorted(batch))).hexdigest()


def test_batch_is_a_pure_function_of_seed_and_step(prepared):
    cfg, store = prepared
    running = TfdsSource(cfg, store=store)
    seen = [running.batch(step) for step in range(8)]
    restarted = TfdsSource(cfg, store=store)  # a resumed run asks for step 7 first
    assert_batches_equal(restarted.batch(7), seen[7])
    assert_batches_equal(restarted.batch(2), seen[2])
    assert_batches_equal(restarted.eval_batch(1), running.eval_batch(1))
    assert digest(seen[3]) != digest(seen[4])
    other_seed = TfdsSource(with_data(cfg, seed=1), store=store)
    assert digest(other_seed.batch(7)) != digest(seen[7])
    running.close()
    restarted.close()


FRESH_PROCESS = """
import hashlib, sys
from pathlib import Path
from tests.data.conftest import make_cfg
from scalelab.cli import main
from scalelab.data import make_source
from scalelab.data.builder import prepare_dataset
source = make_source(make_cfg(Path(sys.argv[1])))
for step in (0, 5, 123):
    batch = source.batch(step)
    print(hashlib.sha256(b"".join(batch[k].tobytes() for k in sorted(batch))).hexdigest())
"""


def test_same_batches_in_another_process(prepared):
    cfg, store = prepared
    env = {**os.environ, "PYTHONHASHSEED": "12345", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, cfg.data.data_dir], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    source = TfdsSource(cfg, store=store)
    assert result.stdout.split() == [digest(source.batch(step)) for step in (0, 5, 123)]


@pytest.mark.parametrize("hosts", [2, 4])
def test_host_shards_partition_the_global_batch(prepared, hosts):
    cfg, store = prepared
    whole = TfdsSource(cfg, store=store)
    shards = [TfdsSource(cfg, index, hosts, store=store) for index in range(hosts)]
    steps_per_epoch = whole.n_train // cfg.train.batch_size
    for step in (0, 1, steps_per_epoch, steps_per_epoch + 1):  # within the first epoch and across the boundary
        parts = [shard.batch(step) for shard in shards]
        for key, value in whole.batch(step).items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)
            assert all(len(p[key]) == cfg.train.batch_size // hosts for p in parts)
        for key, value in whole.eval_batch(step).items():
            np.testing.assert_array_equal(np.concatenate([s.eval_batch(step)[key] for s in shards]), value)


def test_each_epoch_visits_every_row_once():
    n = 1000
    first = shuffled_rows(range(n), n, seed=3, stream=0)
    second = shuffled_rows(range(n, 2 * n), n, seed=3, stream=0)
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second and first != list(range(n))
    assert shuffled_rows(range(n), n, seed=4, stream=0) != first


def test_prefetched_batches_equal_on_demand_ones(prepared):
    cfg, store = prepared
    eager = TfdsSource(with_data(cfg, prefetch=0), store=store)
    ahead = TfdsSource(with_data(cfg, prefetch=3), store=store)
    assert ahead.prefetcher is not None and eager.prefetcher is None
    for step in [0, 1, 2, 3, 10, 4, 5, 5]:  # in order, then a jump back and forth
        assert_batches_equal(ahead.batch(step), eager.batch(step))
    assert set(ahead.prefetcher.pending) == {6, 7, 8}
    ahead.close()


def test_token_streams_decode_to_the_documents(prepared):
    cfg, store = prepared
    version_dir = require_dataset(cfg.data)
    for role, split in (("train", "train"), ("eval", "validation")):
        stream = np.asarray(store.stream(role))
        starts = np.flatnonzero(stream == store.meta["eos_id"])
        assert starts[0] == 0 and len(starts) == store.meta["splits"][role]["documents"]
        decoded = [store.tokenizer.decode(doc[1:]) for doc in np.split(stream, starts[1:])]
        assert decoded == list(TextSplit(version_dir, split).texts())


def test_source_through_the_registry(prepared):
    cfg, _ = prepared
    batch = make_source(cfg, 1, 2).batch(0)
    assert batch["inputs"].shape == batch["positions"].shape == (cfg.train.batch_size // 2, cfg.train.seq_len)
    assert batch["inputs"].max() < VOCAB
    plain = make_source(with_data(cfg, segment_ids=False)).eval_batch(0)
    assert set(plain) == {"inputs", "targets", "weights"}


def test_vocab_size_must_match_a_trained_tokenizer(prepared):
    cfg, _ = prepared
    wrong = make_cfg(Path(cfg.data.data_dir), vocab_size=512)
    with pytest.raises(DataError) as error:
        make_source(wrong)
    message = str(error.value)
    assert f"scalelab tokenizer train --set data.name=tiny_text --set data.data_dir={cfg.data.data_dir}" in message
    assert "--set model.vocab_size=512" in message and f"bpe-{VOCAB}" in message
    with pytest.raises(DataError, match="no unigram tokenizer"):
        find_store(with_data(cfg, tokenizer="unigram").data, VOCAB)


def test_a_vocab_below_any_tokenizer_suggests_one_that_trains(tmp_path, tiny_corpus, capsys):
    # gpt-tiny's vocab_size of 256 is below every tokenizer (256 byte pieces alone), so suggesting to
    # train a 256-piece one sent users into a second error; the suggested size must train and load.
    cfg = make_cfg(tmp_path, vocab_size=256, corpus=str(tiny_corpus))
    prepare_dataset(cfg.data, progress=False)
    with pytest.raises(DataError) as error:
        make_source(cfg)
    message = str(error.value)
    suggested = int(re.search(r"set model\.vocab_size=(\d+) and train", message)[1])
    assert suggested >= min_vocab_size(SENTINELS) > 256
    command = message.split("with: ")[-1]
    assert command.startswith("scalelab tokenizer train ") and f"--set model.vocab_size={suggested}" in command
    assert main([*shlex.split(command)[1:], "--quiet"]) == 0, capsys.readouterr().err
    assert find_store(make_cfg(tmp_path, vocab_size=suggested).data, suggested).meta["vocab_size"] == suggested
    with pytest.raises(DataError) as again:  # now that it is trained, the fix is only to use it
        make_source(cfg)
    assert str(again.value).endswith(
        f"set model.vocab_size={suggested}, whose tokenizer dataset 'tiny_text' already has"
    )


def test_a_store_must_match_the_config(prepared, tmp_path):
    cfg, store = prepared
    with pytest.raises(DataError, match=rf"model.vocab_size \(512\) differs .* \({VOCAB} pieces\)"):
        TfdsSource(make_cfg(tmp_path, vocab_size=512), store=store)
    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    eos = np.array([store.meta["eos_id"]], np.dtype(store.meta["dtype"]))
    (copy / store.meta["splits"]["eval"]["file"]).write_bytes(eos.tobytes())  # one empty document
    with pytest.raises(DataError, match="the validation split holds no tokens"):
        TfdsSource(cfg, store=open_store(copy))


def test_unprepared_dataset_names_the_command(tmp_path):
    with pytest.raises(DataError, match=r"not prepared .*scalelab data prepare --set data.name=tiny_text"):
        make_source(make_cfg(tmp_path))
    with pytest.raises(DataError, match=r"--set data.corpus=PATH .*tfds build lm1b --data_dir"):
        make_source(make_cfg(tmp_path, name="lm1b"))


def test_interrupted_tokenizer_train_leaves_no_store(prepared, monkeypatch):
    cfg, _ = prepared

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("scalelab.data.tokens.encode_split", broken)
    with pytest.raises(KeyboardInterrupt):
        build_store(cfg.data, 400, progress=False)
    with pytest.raises(DataError, match="no bpe tokenizer with 400 pieces"):
        find_store(cfg.data, 400)


class CatalogLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shaped like lm1b: a `text` feature and a `test` split instead of `validation`."""

    VERSION = tfds.core.Version("1.1.0")
    name = "catalog_like"

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        docs = make_documents(60, seed=5)
        return {"train": self._generate_examples(docs[:50]), "test": self._generate_examples(docs[50:])}

    def _generate_examples(self, docs):
        for i, doc in enumerate(docs):
            yield i, {"text": doc}


def test_catalog_style_dataset_reads_through_the_same_interface(tmp_path):
    tfds.disable_progress_bar()
    CatalogLike(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = make_cfg(tmp_path, name="catalog_like", prefetch=0)
    store, built = build_store(cfg.data, VOCAB, progress=False)
    assert built and store.meta["splits"]["eval"]["split"] == "test"
    assert store.meta["splits"]["eval"]["documents"] == 10
    batch = make_source(cfg).eval_batch(0)
    assert batch["weights"].sum() > 0
