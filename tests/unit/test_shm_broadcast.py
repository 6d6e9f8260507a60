"""The shared-memory ring that carries each step to the tensor-parallel workers (pagedllm/distributed/
shm_broadcast.py): messages arrive whole and in order through slot reuse, a message larger than a slot travels in
its doorbell, a writer lapped by a dead reader stops with an error instead of waiting forever, and two engines
never share a segment."""
import pytest

from pagedllm.distributed.shm_broadcast import ShmBroadcaster, ShmReader


@pytest.fixture
def ring():
    writer = ShmBroadcaster(num_readers=2, num_slots=3, slot_bytes=256)
    readers = [ShmReader(writer.handle(), i) for i in range(2)]
    yield writer, readers
    for r in readers:
        r.close()
    writer.close()


def test_messages_arrive_in_order_through_slot_reuse_and_overflow(ring):
    writer, readers = ring
    messages = [("launch", {"step": i, "ids": list(range(i % 7))}, "x" * (i * 29 % 600)) for i in range(40)]
    in_slot = 0
    for msg in messages:
        doorbell = writer.publish(msg)
        in_slot += doorbell == b""
        assert [r.read(doorbell) for r in readers] == [msg, msg]
    # both paths were taken: small messages through the 3 slots (reused ~9 times each), big ones in the doorbell
    assert 10 < in_slot < 40


def test_a_lagging_reader_blocks_the_writer_until_it_reads(ring):
    writer, (fast, slow) = ring
    doorbells = [writer.publish(i) for i in range(3)]     # fills the 3 slots
    for d in doorbells:
        fast.read(d)
    with pytest.raises(EOFError, match="readers are gone"):
        writer.publish(3, alive=lambda: False)      # slot 0 still unread by `slow`: the writer would wait
    assert [slow.read(d) for d in doorbells] == [0, 1, 2]


def test_two_rings_have_their_own_segments():
    a, b = ShmBroadcaster(num_readers=1), ShmBroadcaster(num_readers=1)
    try:
        assert a.handle()[0] != b.handle()[0]
    finally:
        a.close()
        b.close()
