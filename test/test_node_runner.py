"""The node entry glue: what ``run_node`` does between building a node and spinning it."""

import gc

from kb_ros.nodes.runner import freeze_startup_heap


def test_start_up_objects_leave_the_collectors_generations():
    """A frozen object is never walked by a collection pass again: no pause grows with it."""
    started = [[index] for index in range(1000)]  # stands in for a node's start-up heap
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(started)
        tracked = {id(obj) for obj in gc.get_objects()}
        assert not any(id(obj) in tracked for obj in started)
        made_later = [0]
        assert any(obj is made_later for obj in gc.get_objects())
    finally:
        gc.unfreeze()
