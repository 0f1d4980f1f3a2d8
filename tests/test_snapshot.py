"""Broker snapshots: written on stop, restored at start, refused when torn or corrupt."""

import signal

import numpy as np
import pytest
import zmq

from qrl.brokers import snapshot
from qrl.brokers.server import Broker, BrokerConfig
from qrl.protocol.transport import Client
from conftest import CreditedPush, wait_for
from test_broker import SPEC, TOKEN, register_meta, segment


def test_a_restarted_broker_restores_table_spec_and_weights(procs, tmp_path):
    snap = tmp_path / "snap"
    broker, address = procs.start_broker("--snapshot-dir", str(snap))
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        reply = client.request("register", register_meta(version=3),
                               {"w": np.arange(3, dtype=np.float32)}, wait_s=15)
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{reply.meta['ports']['ingest']}")
        push = CreditedPush(push, address)
        for seq in range(3):
            push.send_multipart(segment(seq))
        wait_for(lambda: client.request("get_stats", wait_s=15).meta["items"] == 24, 15, "24 items")
        push.close(linger=0)
        client.close()
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(15) == 0
        assert (snap / snapshot.SNAPSHOT).exists() and (snap / snapshot.DIGEST).exists()

        _, address2 = procs.start_broker("--snapshot-dir", str(snap))
        client = Client(ctx, address2, "test")
        stats = client.request("get_stats", wait_s=15).meta
        assert stats["replay_size"] == 24 and stats["run_id"] == SPEC["run_id"] and stats["snapshot_error"] is None
        assert client.request("get_spec", wait_s=15).meta["spec"] == SPEC
        weights = client.request("get_weights", wait_s=15)
        assert weights.meta["version"] == 3
        np.testing.assert_array_equal(weights.arrays["w"], [0, 1, 2])
        batch = client.request("sample", {"token": TOKEN, "batch_size": 8}, wait_s=15)
        np.testing.assert_array_equal(batch.arrays["obs"][:, 0], batch.arrays["_id"] // 8)  # rows intact
        client.close()
    finally:
        ctx.destroy(linger=0)


def test_a_corrupt_or_torn_snapshot_is_reported_and_not_loaded(tmp_path):
    from qrl.brokers.tables import ReplayTable, TableConfig

    table = ReplayTable(TableConfig(capacity=10, min_size=0))
    table.insert({"x": np.arange(4, dtype=np.float32)})
    snapshot.save(tmp_path, table, SPEC, {"w": np.zeros(2, np.float32)}, 1)
    assert snapshot.load(tmp_path).table.size == 4

    data = bytearray((tmp_path / snapshot.SNAPSHOT).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / snapshot.SNAPSHOT).write_bytes(bytes(data))
    broker = Broker(BrokerConfig(port=0, snapshot_dir=str(tmp_path)), ctx=zmq.Context())
    try:
        assert broker.table is None and broker.spec is None
        assert "checksum" in broker.stats_summary()["snapshot_error"]
    finally:
        broker.close()
        broker.ctx.destroy(linger=0)

    (tmp_path / snapshot.DIGEST).unlink()  # torn: the data was written, its digest never was
    with pytest.raises(snapshot.SnapshotError, match="checksum"):
        snapshot.load(tmp_path)
