"""`tracking.Run` and `tracking.NoOpRun` answer the same verbs (`tracking.RunProtocol`), with the same
signatures: a verb added to `Run` and used in training fails here, not only on a multi-worker cluster."""

import inspect

import pytest

from seglab.tracking import NoOpRun, Run, RunProtocol


def verbs(cls) -> dict[str, inspect.Signature]:
    """The methods `cls` itself defines that a caller uses: public ones, and the context manager's."""
    return {name: inspect.signature(member) for name, member in vars(cls).items()
            if callable(member) and (not name.startswith("_") or name in ("__enter__", "__exit__"))}


PROTOCOL = verbs(RunProtocol)


@pytest.mark.parametrize("cls", [Run, NoOpRun])
def test_every_verb_of_the_protocol_is_implemented_with_its_signature(cls):
    implemented = verbs(cls)
    missing = sorted(set(PROTOCOL) - set(implemented))
    assert not missing, f"{cls.__name__} lacks {missing} of RunProtocol"
    differ = {name: (str(implemented[name]), str(sig)) for name, sig in PROTOCOL.items() if implemented[name] != sig}
    assert not differ, f"{cls.__name__}'s signatures differ from RunProtocol's: {differ}"


# How a run's owner (seglab.engine.owner) begins and ends the Run: not verbs that training calls.
OWNERS_HANDLES = {"open", "end", "let_go"}


def test_every_public_member_of_run_is_in_the_protocol():
    public = {name for name, member in vars(Run).items() if not name.startswith("_") and (callable(member) or isinstance(member, property))}
    assert public - set(PROTOCOL) - OWNERS_HANDLES == set(), "add these verbs of Run to RunProtocol and NoOpRun"


def test_both_have_the_protocols_attributes():
    attributes = set(inspect.get_annotations(RunProtocol))
    assert attributes == {"run_id", "experiment_id"}
    run = Run("sqlite:///unused.db", "e", "r", {})  # not entered: no store is touched
    for instance in (run, NoOpRun()):
        assert all(hasattr(instance, name) for name in attributes), type(instance).__name__


def test_the_no_op_run_logs_nothing_and_lets_errors_through():
    with NoOpRun() as run:
        assert run.log_model(object(), None) is None and run.run_id is None
    with pytest.raises(ValueError), NoOpRun():
        raise ValueError("not swallowed")


def test_a_commands_run_its_owner_answers_every_verb_as_the_run_it_owns():
    """Training, evaluate and bench log through `engine.owner.RunOwner` (claim, signals, end status), which hands
    the verbs it does not define to its Run: so it answers all of them, with the protocol's signatures."""
    from seglab.engine.owner import RunOwner

    owned, plain = RunOwner(Run("sqlite:///unused.db", "e", "r", {})), NoOpRun()  # not entered: no store is touched
    for name in PROTOCOL:
        assert inspect.signature(getattr(owned, name)) == inspect.signature(getattr(plain, name)), name
    assert owned.run_id is None and owned.experiment_id is None
