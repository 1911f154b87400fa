"""ingestor/shm.py: one owner creates and unlinks a block; children attach by name, see its bytes, and only close."""

from __future__ import annotations

import uuid

import pytest

from ingestor.errors import SharedMemoryError
from ingestor.shm import SharedBlock, attached


class Block(SharedBlock):
    @classmethod
    def create(cls, size: int) -> Block:
        return cls(cls._allocate(size), owner=True)

    @classmethod
    def attach(cls, name: str) -> Block:
        return cls(cls._open(name, "test block"), owner=False)


@pytest.fixture
def owned():
    block = Block.create(4096)
    yield block
    block.unlink()
    block.close()


def test_a_new_block_is_zeroed_and_an_attached_one_sees_its_bytes(owned):
    assert bytes(owned.buf[:4096]) == bytes(4096)
    owned.buf[:5] = b"scale"
    other = Block.attach(owned.name)
    assert bytes(other.buf[:5]) == b"scale"
    other.close()


def test_attaching_a_block_that_is_gone_names_it():
    name = "nothing-" + uuid.uuid4().hex[:8]
    with pytest.raises(SharedMemoryError, match=f"test block '{name}' does not exist"):
        Block.attach(name)


def test_only_the_owner_may_unlink(owned):
    other = Block.attach(owned.name)
    with pytest.raises(SharedMemoryError, match="only the process that created"):
        other.unlink()
    other.close()
    Block.attach(owned.name).close()  # still there


def test_attached_closes_every_block_also_when_the_with_ends_in_an_error(owned):
    blocks = (Block.attach(owned.name), Block.attach(owned.name))
    with pytest.raises(RuntimeError), attached(*blocks):
        raise RuntimeError("the child's work failed")
    for block in blocks:  # closed: no buffer any more, and the error says so
        with pytest.raises(SharedMemoryError, match=f"'{owned.name.lstrip('/')}' is closed in this process"):
            block.buf  # noqa: B018 (the property's read is what raises)

