"""`make security`, round 3 (issue #31): each attack runs against a chat service while another user chats.
Counted and held by the suite (README, "Security and faults"): the attacks' requests and their 5xx, what a
user without quota managed to spend (tokens, embeddings, chunks), the other user's chats and their 5xx. How
much the other user is slowed is a timing: bench/attacks.py measures it with each party in a process of its own
(here the attacker, the service and the other user share one event loop), and `make security` runs it after
the suites, against its 2x target."""

from __future__ import annotations

from services.chat.app import create_app
from services.chat.resources import CHAT as RESOURCES
from tests import attacks
from tests.conftest import TEST_SECRET
from tests.figures import FIGURES
from tests.polling import until

# The other user chats for as long as an attack lasts: a monthly quota of their own must not end their chats.
BYSTANDER_QUOTA = 100_000_000


async def attacked(make_client, settings) -> attacks.Service:
    return attacks.Service(await make_client(create_app(settings)), TEST_SECRET)


async def bystander_user(factory) -> int:
    other = await factory.user("voisin")
    await factory.usage(other, used=0, quota=BYSTANDER_QUOTA)
    return other


async def spent_by(db, user_id: int) -> int:
    """Everything a user made the service spend or keep: tokens charged, chunks stored, charges recorded."""
    return await db.fetchval(
        "SELECT COALESCE((SELECT sum(used_tokens) FROM user_token_usage WHERE user_id = $1), 0)"
        " + (SELECT count(*) FROM kb_chunks c JOIN kb_documents d USING (document_id) WHERE d.user_id = $1)"
        " + (SELECT count(*) FROM unsaved_charges WHERE user_id = $1)",
        user_id,
    )


def count(statuses: list[int], watch: attacks.Watch) -> None:
    FIGURES["attack_requests"] += len(statuses)
    FIGURES["attack_5xx"] += sum(status >= 500 for status in statuses)
    FIGURES["bystander_chats"] += len(watch.statuses)
    FIGURES["bystander_5xx"] += sum(status >= 500 for status in watch.statuses)


async def test_a_user_without_quota_spends_nothing_while_another_chats(
    make_client, chat_settings, factory, db, fake_mistral
):
    service = await attacked(make_client, chat_settings)
    client = service.client
    hostile, other = await factory.user("sans-quota"), await bystander_user(factory)
    await factory.usage(hostile, used=0, quota=0)
    async with attacks.bystander(service, other) as watch:
        statuses = await attacks.budget_attack(service, hostile)
    count(statuses, watch)
    FIGURES["no_quota_attempts"] += len(statuses)
    FIGURES["no_quota_spent"] += await spent_by(db, hostile)
    assert statuses == [429] * len(statuses)
    assert await spent_by(db, hostile) == 0
    assert client.app[RESOURCES].extractor.submitted == 0  # no file read (the bystander sends none)
    assert len(fake_mistral.embedded) == 0
    assert set(watch.statuses) == {200}


async def test_long_questions_in_a_crowded_conversation_leave_the_others_served(
    make_client, chat_settings, factory, db, fake_mistral
):
    service = await attacked(make_client, chat_settings)
    hostile, other = await factory.user("bavard"), await bystander_user(factory)
    conversation = await attacks.crowded_conversation(db, hostile)
    async with attacks.bystander(service, other) as watch:
        statuses = await attacks.retrieval_attack(service, hostile, conversation)
    count(statuses, watch)
    assert set(statuses) <= {200, 429}, statuses  # answered, or refused once the quota is spent: never a 5xx
    assert 200 in statuses
    assert set(watch.statuses) == {200}
    # Each long question read its own conversation's chunks, nobody else's: the other user's prompts hold none.
    others = [body for body in fake_mistral.received if "Bonjour" in body["messages"][-1]["content"]]
    assert others and all("terme" not in body["messages"][0]["content"] for body in others)


async def test_abandoned_slow_files_stop_and_leave_the_others_served(
    make_client, chat_settings, factory, db, fake_mistral
):
    service = await attacked(make_client, chat_settings)
    client = service.client
    hostile, other = await factory.user("lent"), await bystander_user(factory)
    async with attacks.bystander(service, other, with_file=True) as watch:
        statuses = await attacks.extraction_attack(service, hostile)
        # The abandoned files' jobs are withdrawn or their workers killed: the pool holds none of them.
        await until(lambda: client.app[RESOURCES].extractor.jobs == 0)
    count(statuses, watch)
    assert set(statuses) <= {429, 499} and 499 in statuses, statuses  # left, or refused at once: never read
    assert (
        client.app[RESOURCES].extractor.submitted >= 1
    )  # a slow file reached a worker (the bystander's are read inline)
    assert set(watch.statuses) == {200}
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    # Nothing charged for answers nobody received.
    assert (
        await db.fetchval("SELECT COALESCE(sum(used_tokens), 0) FROM user_token_usage WHERE user_id = $1", hostile) == 0
    )
