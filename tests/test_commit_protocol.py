"""One commit protocol, one set of crash tests: the token store, the sample store and weight folders.

Each of the three formats writes through `storage.commit` (objects whole, then a commit record, a
manifest last). Here each one's write sequence is cut after every step in turn, on the local disk and
on the real local S3 server (SeaweedFS): the first k writes and deletes happen, the next one crashes.
On S3 the crashed PUT never completes (the object does not appear, as a dropped PUT leaves it); on the
local disk it leaves a torn temporary file behind, as a process killed mid-write does. After every
crash a reader must see either nothing complete or a complete, correct result (never a record over
missing or half-written objects), and a rerun of the writer must complete it. The cut points are
counted, not listed, so a new step in a writer is crashed at too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid

import numpy as np
import pytest
import torch

import storage.commit as commit
from evaluation.sample_store import SampleShard, SampleStore, plan_sample_shards
from pipeline.store import StoreIncompleteError, StoreManifest, TokenShard, TokenStoreWriter, open_token_store
from storage.filesystem import url_to_fs
from weights import load_folder_weights, read_folder_config, save_folder

BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]


class Crash(Exception):
    """The writer's process dies here."""


@contextlib.contextmanager
def crash_after(monkeypatch, steps: int):
    """Let `steps` writes/deletes of `storage.commit` through, then crash at the next one.

    Yields a list that ends up holding how many steps ran (to know when a run got through whole).
    """
    ran = [0]
    counter = itertools.count()
    write, remove = commit._write_object, commit._remove_object

    def crashing_write(fs, path, data):
        if next(counter) >= steps:
            if commit.is_local_filesystem(fs):  # a torn temporary, as a kill in the middle leaves
                folder = os.path.dirname(path)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f".{os.path.basename(path)}.torn.tmp"), "wb") as handle:
                    handle.write(data[: len(data) // 2])
            raise Crash(path)
        write(fs, path, data)
        ran[0] += 1

    def crashing_remove(fs, path):
        if next(counter) >= steps:
            raise Crash(path)
        remove(fs, path)
        ran[0] += 1

    with monkeypatch.context() as patch:
        patch.setattr(commit, "_write_object", crashing_write)
        patch.setattr(commit, "_remove_object", crashing_remove)
        yield ran


@pytest.fixture
def location(request, tmp_path):
    """A fresh (url, storage_options) on the backend under test; call it for each new root."""
    if request.param == "local":
        return lambda: (str(tmp_path / uuid.uuid4().hex[:8]), None)
    server = request.getfixturevalue("s3_server")
    return lambda: (server.url("commit-protocol", uuid.uuid4().hex[:8]), server.storage_options)


# --- the three users: write (resumable, as the jobs do) and read (None: nothing complete) ----------


class TokenStoreUser:
    """Two shards, their commit records, then the manifest; a rerun redoes unverified shards."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.shards = [
            TokenShard(
                rng.integers(0, 1024, (n, 1, 2, 2), dtype=np.uint16),
                rng.integers(0, 10, n).astype(np.int64),
                np.array([f"img/{i}" for i in range(n)]),
            )
            for n in (3, 2)
        ]

    def write(self, url, options):
        writer = TokenStoreWriter(url, options)
        writer.ensure_plan({"shard_size": 3})
        commits = []
        for index, shard in enumerate(self.shards):
            done = writer.read_commit(index)  # verified: a record over a bad object is redone
            if done is None:
                rejects = [{"image_id": f"bad-{index}", "reason": "corrupt"}]
                writer.write_shard(index, shard, "arrow", rejects)
                done = writer.read_commit(index)
            commits.append(done)
        manifest = StoreManifest(
            store_format="arrow", codebook_size=1024, grid=(2, 2), resolution=8, views=("original",),
            tokenizer={"weights_sha256": "ab" * 32}, class_names=tuple(map(str, range(10))), shards=(),
        )  # fmt: skip
        writer.commit(manifest, commits)

    def read(self, url, options):
        writer = TokenStoreWriter(url, options)
        for index in writer.committed_indices():  # a commit record always sits over a whole shard
            assert writer.read_commit(index, verify=True) is not None, f"shard {index} committed but bad"
        try:
            store = open_token_store(url, options)
        except StoreIncompleteError:
            return None
        assert [r["image_id"] for r in store.read_rejects()] == ["bad-0", "bad-1"]
        return [store.read_shard(i) for i in range(store.num_shards)]

    def check(self, result):
        assert len(result) == len(self.shards)
        for got, want in zip(result, self.shards, strict=True):
            np.testing.assert_array_equal(got.tokens, want.tokens)
            np.testing.assert_array_equal(got.labels, want.labels)


class SampleStoreUser:
    """The plan, then each shard's images and marker; a rerun redoes shards without a marker."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.plan = plan_sample_shards(5, 3)
        self.shards = [
            SampleShard(
                rng.integers(0, 256, (p.stop - p.start, 4, 4, 3), dtype=np.uint8),
                np.arange(p.start, p.stop, dtype=np.int64) % 2,
                np.arange(p.start, p.stop, dtype=np.int64) + 7,
                np.arange(p.start, p.stop, dtype=np.int64),
            )
            for p in self.plan
        ]

    def _store(self, url, options):
        return SampleStore(*url_to_fs(url, options))

    def write(self, url, options):
        store = self._store(url, options)
        store.ensure_plan({"num_samples": 5, "shard_size": 3})
        done = store.committed_samples()
        for shard in self.plan:
            if shard.index not in done:
                store.record_attempt(shard.index, "run", uuid.uuid4().hex[:6])
                store.write_samples(shard.index, self.shards[shard.index])

    def read(self, url, options):
        store = self._store(url, options)
        committed = store.committed_samples()
        shards = {index: store.read_samples(index) for index in committed}  # each marker: a whole shard
        for index, shard in shards.items():
            np.testing.assert_array_equal(shard.images, self.shards[index].images)
        assert all(record["run"] == "run" for record in store.attempts())  # no torn record is listed
        return [shards[i] for i in range(len(self.plan))] if committed == {0, 1} else None

    def check(self, result):
        for got, want in zip(result, self.shards, strict=True):
            np.testing.assert_array_equal(got.seeds, want.seeds)


class WeightFolderUser:
    """A folder that holds version "old" is overwritten with "new": never a mix, a rerun finishes."""

    def __init__(self):
        self.states = {name: {"w": torch.full((3, 2), float(i))} for i, name in enumerate(("old", "new"))}

    def _save(self, url, options, name):
        save_folder(url, format_name="test-model", config={"name": name}, state_dict=self.states[name],
                    storage_options=options)  # fmt: skip

    def prepare(self, url, options):
        self._save(url, options, "old")

    def write(self, url, options):
        self._save(url, options, "new")

    def read(self, url, options):
        try:
            record = read_folder_config(url, "test-model", options)
        except FileNotFoundError:
            return None
        name = record["config"]["name"]
        fs, root = url_to_fs(url, options)
        assert commit.sha256_hex(fs.cat_file(f"{root}/model.safetensors")) == record["weights_sha256"]
        torch.testing.assert_close(
            load_folder_weights(url, storage_options=options)["w"], self.states[name]["w"]
        )
        return name

    def check(self, result):
        assert result == "new"


USERS = {"token_store": TokenStoreUser, "sample_store": SampleStoreUser, "weight_folder": WeightFolderUser}


@pytest.mark.parametrize("location", BACKENDS, indirect=True)
@pytest.mark.parametrize("user_name", sorted(USERS))
def test_a_crash_at_every_step_leaves_nothing_half_written_and_a_rerun_completes(
    user_name, location, monkeypatch
):
    user = USERS[user_name]()
    for steps in itertools.count():
        url, options = location()
        if hasattr(user, "prepare"):
            user.prepare(url, options)
            assert user.read(url, options) == "old"
        with crash_after(monkeypatch, steps) as ran:
            try:
                user.write(url, options)
                crashed = False
            except Crash:
                crashed = True
        if not crashed:  # the whole sequence fits in `steps`: every cut point has been tried
            user.check(user.read(url, options))
            assert steps >= 3 and ran[0] <= steps
            break
        seen = user.read(url, options)  # after a crash: nothing complete, or the old complete state
        assert seen is None or seen == "old", f"a crash after {steps} steps left {seen!r} readable"
        user.write(url, options)  # the rerun
        user.check(user.read(url, options))
