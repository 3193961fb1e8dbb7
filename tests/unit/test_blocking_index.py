"""The index a Consul blocking query sends (servicekit.blocking_index), used by discovery and live config."""

from servicekit.blocking_index import BlockingIndex


def test_the_next_query_sends_the_last_answers_index():
    index = BlockingIndex()
    assert index.next is None, "the first query answers at once"
    assert index.answered(10) is False
    assert (index.last, index.next) == (10, 10)


def test_an_index_that_goes_backwards_or_is_not_positive_starts_over():
    index = BlockingIndex()
    index.answered(10)
    assert index.answered(4) is True, "the agent restarted"
    assert (index.last, index.next) == (4, None)
    assert index.answered(0) is True
    assert index.next is None, "never send 0"


def test_a_failed_query_starts_over_but_remembers_the_last_answer():
    index = BlockingIndex()
    index.answered(10)
    index.failed()
    assert (index.last, index.next) == (10, None)
    assert index.answered(3) is True, "a restarted agent's lower index is still noticed"
