"""Trainer / layout / data-partition selection (trainer.devices): every branch on a CPU-only machine."""
import pytest

import trainer  # noqa: F401
from ddcache.errors import UserError
from trainer import devices
from trainer.devices import choose_trainer


def test_cpu_machine_defaults_to_simple_trainer_nhwc():
    c = choose_trainer(gpus=None, visible_gpus=0)
    assert (c.kind, c.num_gpus, c.data_format, c.rank, c.world, c.is_chief) == ("simple", 0, "NCHW", 0, 1, True)
    assert c.trainer_class_name == "SimpleTrainer"


def test_gpu_machine_defaults_to_one_gpu_nchw():
    c = choose_trainer(gpus=None, visible_gpus=4)
    assert (c.kind, c.num_gpus, c.data_format) == ("simple", 1, "NCHW")


def test_gpus_zero_forces_cpu_even_with_gpus():
    c = choose_trainer(gpus=0, visible_gpus=2)
    assert (c.kind, c.num_gpus, c.data_format) == ("simple", 0, "NCHW")


def test_several_gpus_replicated_reads_whole_data():
    c = choose_trainer(gpus=4, visible_gpus=8)
    assert (c.kind, c.num_gpus, c.data_format, c.rank, c.world) == ("replicated", 4, "NCHW", 0, 1)
    assert c.trainer_class_name == "SyncMultiGPUTrainerReplicated"


def test_more_gpus_than_visible_is_user_error():
    with pytest.raises(UserError, match="only 1 GPU"):
        choose_trainer(gpus=2, visible_gpus=1)
    with pytest.raises(UserError, match="only 0 GPU"):
        choose_trainer(gpus=1, visible_gpus=0)


@pytest.mark.parametrize("rank,size", [(0, 4), (3, 4)])
def test_horovod_gives_each_rank_its_data_part(rank, size):
    c = choose_trainer(horovod=True, visible_gpus=8, horovod_rank=rank, horovod_size=size)
    assert (c.kind, c.num_gpus, c.data_format, c.rank, c.world) == ("horovod", 1, "NCHW", rank, size)
    assert c.is_chief == (rank == 0)
    assert c.trainer_class_name == "HorovodTrainer"


def test_horovod_on_cpu_uses_nhwc():
    c = choose_trainer(horovod=True, visible_gpus=0, horovod_rank=1, horovod_size=2)
    assert (c.num_gpus, c.data_format, c.rank, c.world, c.is_chief) == (0, "NCHW", 1, 2, False)


def test_horovod_with_many_gpus_or_bad_rank_is_user_error():
    with pytest.raises(UserError, match="horovodrun"):
        choose_trainer(gpus=4, horovod=True, visible_gpus=4, horovod_rank=0, horovod_size=4)
    with pytest.raises(UserError, match="rank 4 of size 4"):
        choose_trainer(horovod=True, visible_gpus=4, horovod_rank=4, horovod_size=4)


def test_negative_gpus_is_user_error():
    with pytest.raises(UserError):
        choose_trainer(gpus=-1, visible_gpus=0)


def test_missing_horovod_is_one_line_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "horovod", None)  # makes "import horovod..." raise ImportError
    monkeypatch.setitem(sys.modules, "horovod.tensorflow", None)
    with pytest.raises(UserError) as info:
        devices.horovod_rank_world()
    assert "horovod" in str(info.value) and "\n" not in str(info.value)


def test_make_trainer_builds_the_chosen_class_on_cpu():
    from tensorpack.train import SimpleTrainer

    t = devices.make_trainer(choose_trainer(gpus=0, visible_gpus=0))
    assert type(t) is SimpleTrainer


def test_this_machine_resolves_to_cpu_simple_trainer():
    c = devices.resolve_choice(gpus=None, horovod=False)
    assert c.kind == "simple" and c.data_format == "NCHW"


def test_replicated_towers_sum_their_gradients_and_devices_count_for_the_lr():
    """The reference's semantics: towers' gradients are summed (the optimizer divides by TRAIN.REFERENCE_BATCH),
    and the device count the LR schedule sees is towers x ranks."""
    from trainer.devices import TrainerChoice, make_trainer

    replicated = make_trainer(TrainerChoice("replicated", 2, "NCHW"))
    assert replicated._builder._average is False
    assert TrainerChoice("replicated", 4, "NCHW").total_devices == 4
    assert TrainerChoice("horovod", 1, "NCHW", rank=1, world=8).total_devices == 8
    assert TrainerChoice("simple", 0, "NCHW").total_devices == 1
