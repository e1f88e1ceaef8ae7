"""PerChatOrder: chats are handled at once, one chat's updates in the order they came."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from telegram import Chat, Message, Update

from ovbot.adapters.telegram.ordering import PerChatOrder, chat_of


def update(update_id: int, chat_id: int) -> Update:
    chat = Chat(id=chat_id, type=Chat.PRIVATE)
    message = Message(message_id=update_id, date=dt.datetime.now(dt.timezone.utc), chat=chat, text="hi")
    return Update(update_id=update_id, message=message)


class Recorder:
    """Handlers that log when they start and end and wait until released."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.gates: dict[int, asyncio.Event] = {}

    async def handle(self, update_id: int) -> None:
        self.events.append(f"start {update_id}")
        await self.gates.setdefault(update_id, asyncio.Event()).wait()
        self.events.append(f"end {update_id}")

    def release(self, update_id: int) -> None:
        self.gates.setdefault(update_id, asyncio.Event()).set()


async def spawn(processor: PerChatOrder, recorder: Recorder, update_id: int, chat_id: int) -> asyncio.Task[None]:
    """As python-telegram-bot does it: one task per fetched update, in fetch order."""
    return asyncio.create_task(processor.process_update(update(update_id, chat_id), recorder.handle(update_id)))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_chat_waits_for_its_previous_update_other_chats_do_not() -> None:
    processor, recorder = PerChatOrder(), Recorder()
    first = await spawn(processor, recorder, 1, chat_id=10)
    second = await spawn(processor, recorder, 2, chat_id=10)
    other = await spawn(processor, recorder, 3, chat_id=20)
    await settle()
    assert recorder.events == ["start 1", "start 3"]  # 2 waits for 1; chat 20 does not

    recorder.release(2)  # released early: it must still wait for 1 to end
    recorder.release(3)
    await settle()
    assert recorder.events == ["start 1", "start 3", "end 3"]

    recorder.release(1)
    await asyncio.gather(first, second, other)
    assert recorder.events == ["start 1", "start 3", "end 3", "end 1", "start 2", "end 2"]


async def test_an_update_cancelled_while_waiting_leaves_the_chain_intact() -> None:
    processor, recorder = PerChatOrder(), Recorder()
    first = await spawn(processor, recorder, 1, chat_id=10)
    waiting = await spawn(processor, recorder, 2, chat_id=10)
    third = await spawn(processor, recorder, 3, chat_id=10)
    await settle()
    waiting.cancel()  # a stop while it waited its turn
    await settle()
    assert waiting.cancelled()
    assert not first.done()  # the update it waited for goes on

    recorder.release(1)
    recorder.release(3)
    await asyncio.gather(first, third)
    assert recorder.events == ["start 1", "end 1", "start 3", "end 3"]  # 2 never ran, 3 after 1


async def test_a_failing_update_does_not_block_its_chat() -> None:
    processor = PerChatOrder()

    async def fail() -> None:
        raise RuntimeError("handler failed")

    async def succeed() -> str:
        return "done"

    failing = asyncio.create_task(processor.process_update(update(1, 10), fail()))
    following = asyncio.create_task(processor.process_update(update(2, 10), succeed()))
    with pytest.raises(RuntimeError):
        await failing
    await asyncio.wait_for(following, 5)


def test_updates_without_a_chat_need_no_order() -> None:
    assert chat_of(update(1, 42)) == 42
    assert chat_of(Update(update_id=2)) is None
    assert chat_of("not an update") is None
