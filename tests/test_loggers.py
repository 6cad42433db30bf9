"""`log_hdf5`'s writer process: rows through the shared ring and through the pipe, a full ring, signals."""
import os
import signal

import numpy as np
import pytest

from torchstrap_runtime.loggers import HDF5Logger, read_hdf5


def test_rows_wrap_the_ring_and_large_rows_take_the_pipe(tmp_path):
    logger = HDF5Logger(tmp_path / "a.h5")
    logger.RING_BYTES = 1 << 20  # 1 MiB: 64 KiB rows wrap it every 16 calls; 512 KiB rows go through the pipe
    rng = np.random.default_rng(0)
    expected = {"small": [], "big": []}
    for step in range(100):
        small = rng.standard_normal((128, 128)).astype(np.float32)  # 64 KiB
        logger.log({"small": small}, step=step)
        expected["small"].append(small.copy())
        small[:] = 0  # changed after the call: the logged row keeps its values
        if step % 10 == 0:
            big = rng.integers(0, 1000, (256, 512), dtype=np.int32)
            logger.log({"big": big, "label": f"step {step:03d}".encode()}, step=step)
            expected["big"].append(big)
    logger.close()
    arrays = read_hdf5(tmp_path / "a.h5")
    np.testing.assert_array_equal(arrays["small"], np.stack(expected["small"]))
    np.testing.assert_array_equal(arrays["big"], np.stack(expected["big"]))
    assert arrays["big__step"].tolist() == list(range(0, 100, 10))
    assert arrays["label"].tolist() == [f"step {s:03d}".encode() for s in range(0, 100, 10)]


def test_writer_ignores_termination_signals_and_stops_when_closed(tmp_path):
    logger = HDF5Logger(tmp_path / "a.h5")
    logger.log({"x": np.zeros(3)}, step=0)
    writer = logger._process
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):  # a SLURM preemption warning reaches every process
        os.kill(writer.pid, sig)
    logger.log({"x": np.ones(3)}, step=1)
    assert logger.row_counts()["x"] == 2 and writer.poll() is None
    logger.close()
    assert writer.poll() == 0
    assert read_hdf5(tmp_path / "a.h5")["x"].tolist() == [[0, 0, 0], [1, 1, 1]]
    logger.log({"x": np.full(3, 2.0)}, step=2)  # a later call starts a writer again, appending
    logger.close()
    assert read_hdf5(tmp_path / "a.h5")["x__step"].tolist() == [0, 1, 2]


def test_a_dead_writer_is_reported_by_the_next_call(tmp_path):
    logger = HDF5Logger(tmp_path / "a.h5")
    logger.log({"x": np.zeros(3)}, step=0)
    logger._process.kill()
    logger._process.wait()
    with pytest.raises(RuntimeError, match="writer process of .*a.h5"):
        for step in range(1, 100):  # the pipe takes a few calls before it breaks
            logger.log({"x": np.zeros(3)}, step=step)
        logger.drain()
    with pytest.raises(RuntimeError, match="writer process"):
        logger.close()  # tells that rows were lost, and lets the logger go
    assert logger._process is None


def test_background_false_writes_in_this_process(tmp_path):
    logger = HDF5Logger(tmp_path / "a.h5", background=False)
    logger.log({"x": np.arange(4)}, step=7, epoch=1)
    assert logger._process is None and logger.row_counts() == {"x": 1, "x__epoch": 1, "x__step": 1}
    logger.truncate_rows({})
    logger.close()
    assert read_hdf5(tmp_path / "a.h5")["x"].shape == (0, 4)
