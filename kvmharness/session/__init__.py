"""Sessions: a plan (scenario, parameters, variants, runs), the loop that runs it into one
result file, and the ``--until-ci`` stopping rule.  The file itself is results/."""

from kvmharness.session.plan import DEFAULT_REPEAT, QUICK_REPEAT, SessionPlan, expand_variants
from kvmharness.session.run import SessionOutcome, run_session
from kvmharness.session.until_ci import UntilCi

__all__ = [
    "DEFAULT_REPEAT",
    "QUICK_REPEAT",
    "SessionOutcome",
    "SessionPlan",
    "UntilCi",
    "expand_variants",
    "run_session",
]
