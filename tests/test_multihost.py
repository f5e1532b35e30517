"""Several JAX processes: two local CPU processes (4 emulated devices each) train as one job.

The processes talk over a loopback coordinator (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; gloo collectives on CPU). Each reads its own
shard of the image folder (``files[i::2]``) with its own crop stream, so the reference is
built from the same two streams: one process with 8 devices runs `make_train_step` on the
concatenation of the two processes' local batches, which is exactly the global batch
`jax.make_array_from_process_local_data` assembles in the two-process run.

One signal stops both: SIGTERM goes to process 1 only; the processes agree on the step,
both save (orbax, across processes) and exit 0, and the rerun resumes every process from
its own saved data position.
"""

import json
import signal
import socket

import chex
import jax
import numpy as np
import pytest

from drn_jax import checkpointing, data, loading, model_factory, train_state, training
from helpers import TINY, Run, config_flags, data_overrides, subprocess_env, tiny_config, write_photos

STEPS = 30
RUN = {**TINY, "num_train_steps": STEPS, "checkpoint_every_steps": 10}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_job(workdir, folder) -> list[Run]:
    address = f"127.0.0.1:{free_port()}"
    args = [f"--workdir={workdir}", "--config.distributed=True", *config_flags({**RUN, **data_overrides(folder)})]
    return [Run(args, subprocess_env(devices=4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(index)))
            for index in range(2)]


def finish_job(runs: list[Run], timeout: float = 400) -> None:
    try:
        for index, run in enumerate(runs):
            assert run.finish(timeout) == 0, f"process {index}:\n{run.out[-2000:]}\n{run.err[-3000:]}"
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.kill_9()


def reference_params(folder):
    """STEPS steps on 8 devices in this process, each global batch = process 0's + process 1's
    training crops."""
    config = tiny_config(**RUN, **data_overrides(folder))
    model = model_factory.create_model(config)
    optimizer = train_state.create_optimizer(config)
    mesh = training.make_mesh()
    assert mesh.size == 8
    state = training.replicate(train_state.create_train_state(config, model, optimizer, jax.random.key(config.seed)),
                               mesh)
    step = training.make_train_step(config, model, optimizer, mesh)
    source = data.parse_source(config.data.train)
    streams = [data.create_train_dataset(
        source, patch_size=config.data.hr_patch_size, batch_size=config.batch_size // 2, seed=config.seed,
        shuffle_buffer=config.data.shuffle_buffer, process_index=index, process_count=2).as_numpy_iterator()
        for index in range(2)]
    for _ in range(STEPS):
        # Each window under its transform (training applies them on the devices).
        local = [[data.crops.dihedral(window, int(t)) for window, t in zip(batch["hr"], batch["transform"])]
                 for batch in (next(stream) for stream in streams)]
        state, _ = step(state, training.global_batch(np.concatenate(local), mesh))
    return jax.device_get(state.params)


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_global_batches(tmp_path):
    folder = write_photos(tmp_path / "images")
    workdir = tmp_path / "run"

    # 1. Both processes train; SIGTERM reaches process 1 only, and both stop at one step.
    runs = start_job(workdir, folder)
    try:
        runs[0].wait_for(r"^step 2/")  # only process 0 logs
        runs[1].process.send_signal(signal.SIGTERM)
    finally:
        finish_job(runs)
    lead = runs[0].out
    assert "(process 0 of 2): 3 images" in lead  # each process reads its own half of the 6
    stopped = [line for line in lead.splitlines() if line.startswith("SIGTERM: saved step ")]
    assert len(stopped) == 1, lead[-3000:]
    stop_step = int(stopped[0].split()[3].rstrip(";"))
    assert 2 <= stop_step < STEPS
    assert "step " not in runs[1].out.replace("[Gloo]", "")  # process 1 writes no logs
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == stop_step
    data = json.loads((workdir / "checkpoints" / str(stop_step) / "data" / "metadata").read_text())
    local_batch = RUN["batch_size"] // 2
    assert data["positions"] == [stop_step * local_batch] * 2  # one position per process

    # 2. The same command resumes both processes and finishes.
    runs = start_job(workdir, folder)
    finish_job(runs)
    assert f"resumed from step {stop_step} (data position {stop_step * local_batch})" in runs[0].out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["num_processes"] == 2 and summary["num_devices"] == 8
    data = json.loads((workdir / "checkpoints" / str(STEPS) / "data" / "metadata").read_text())
    assert data["positions"] == [STEPS * local_batch] * 2

    # 3. The parameters of one 8-device process fed the same global batches.
    params = loading.load_model(workdir=workdir).variables["params"]
    # Gloo's cross-process sum adds in another order than one process's all-reduce; Adam divides
    # by sqrt(v), so a kernel entry whose gradient is near zero can move by ~1e-5 for a 1e-9
    # difference in it (seen: 4 of 576 entries of one kernel, 1.0e-5; all others within 1e-6).
    chex.assert_trees_all_close(params, reference_params(folder), atol=3e-5, rtol=0)


def test_each_process_restores_its_own_data_position(tmp_path):
    """TFDS streams skip records per process, so positions differ: each gets its own back."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    state = {"w": jnp.arange(3.0)}
    checkpointer = checkpointing.Checkpointer(tmp_path / "two")
    checkpointer.save(7, state, [5, 9])
    checkpointer.close()
    assert json.loads((tmp_path / "two" / "7" / "data" / "metadata").read_text()) == {
        "position": 5, "positions": [5, 9]}
    checkpointer = checkpointing.Checkpointer(tmp_path / "two")
    for index, expected in ((0, 5), (1, 9)):
        restored, position = checkpointer.restore_or(state, process_index=index, process_count=2)
        assert position == expected
        np.testing.assert_array_equal(restored["w"], [0.0, 1.0, 2.0])
    # Written by another number of processes: no saved position continues this split.
    assert checkpointer.restore_or(state, process_index=0, process_count=3)[1] is None
    checkpointer.close()

    # A checkpoint of the earlier single-process layout ({"position": p} only) still resumes.
    manager = ocp.CheckpointManager(tmp_path / "old", item_names=("state", "data"))
    manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=ocp.args.JsonSave({"position": 32})))
    manager.wait_until_finished()
    manager.close()
    checkpointer = checkpointing.Checkpointer(tmp_path / "old")
    assert checkpointer.restore_or(state, process_index=0, process_count=1)[1] == 32
    checkpointer.close()


def test_distributed_setup_errors_are_one_line(monkeypatch):
    from drn_jax.config import ConfigError

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match=r"^JAX_NUM_PROCESSES='two' is not an integer$"):
        training.initialize_distributed()

    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    calls = []

    def no_cluster(**kwargs):
        calls.append(kwargs)
        raise ValueError("coordinator_address should be defined.")
    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    with pytest.raises(ConfigError) as error:
        training.initialize_distributed()
    assert calls == [{"num_processes": 2, "process_id": 1}]
    message = str(error.value)
    assert "\n" not in message and "coordinator_address should be defined" in message
    assert "JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID" in message
