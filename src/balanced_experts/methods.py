"""The methods the report compares, one row each: their names, in report order, and what
each one is. The report's rows, the plots' highlighted method and the tests take the names
from here; a test holds the report captions and the plots' styles to them.

No imports: the Snakefile reads the peers' names and switches from here while it builds
the DAG, and every stage that names a method stays clear of the training code.
"""

PEER_METHODS = {
    "balanced_softmax": ("softmax cross-entropy on logits + log(train prior), plain logits at test time "
                         "(Balanced Softmax, Ren et al. 2020)"),
    "ldam_drw": ("cosine classifier, label-distribution-aware margins, class-balanced re-weighting deferred "
                 "to the last epochs (LDAM-DRW, Cao et al. 2019)"),
    "ride": ("RIDE without router: 3 experts on shared early stages, each with LDAM-DRW's loss and a diversity "
             "term, logits their mean (Wang et al. 2021)"),
    "sade": ("SADE: 3 experts on shared early stages for a forward, uniform and backward label distribution, "
             "logits their mean (Zhang et al. 2022)"),
}
"""The peer methods (balanced_experts.peers.PEERS holds their settings, a test the two
lists equal): one-stage methods trained on the base model's recipe with their own loss,
each its own model (``models/<name>/``) and report row, switched on per setting by
``peers.<name>.enabled``."""

METHODS = {
    "base": "plain cross-entropy model (the generalist)",
    "base_logit_adjusted": "base logits minus tau * log(train prior), tau chosen on val (Menon et al. 2021)",
    "base_tau_norm": "base classifier weights divided by their norm^tau, tau chosen on val (Kang et al. 2020)",
    "base_crt": "classifier re-trained on the frozen base model, class-aware sampling (cRT, Kang et al. 2020)",
    "base_lws": "base classifier with learnable per-class scales, class-aware sampling (LWS, Kang et al. 2020)",
    "experts_naive": "experts fused with identity calibration",
    "experts_prior": "experts fused with only the reject-prior correction",
    "experts_calibrated": "experts fused with the joint calibration fit on val (the method)",
    "oracle": "each image routed to the expert owning its true class (an upper bound)",
    **PEER_METHODS,
}
"""Name -> description of every report row, in report order (a setting's report has the
rows of the peers it switches on; report_info.json lists its rows)."""

TEST_TIME_METHODS = {
    "sade_test_time": ("SADE's experts aggregated on each shifted test set's unlabeled images by the stability "
                       "of two augmented views' predictions: no labels, not the test prior"),
}
"""Rows of the shifted-distribution table only (test_shift.csv): methods that adapt to each
test set itself, so they have no row on the balanced test set of the report."""

GENERALIST = "base"
"""The plain cross-entropy model the other methods start from."""

PROPOSED = "experts_calibrated"
"""The paper's method: the experts fused with the joint calibration."""

PEER_SWITCH = "enabled"
"""The key of a ``peers.<name>`` config section that switches the peer on or off (not a
hyperparameter)."""


def enabled_peers(section: dict | None) -> list[str]:
    """The peers a setting's ``peers`` section switches on (a peer it leaves out is on), in
    :data:`PEER_METHODS` order."""
    section = section or {}
    unknown = sorted(set(section) - set(PEER_METHODS))
    if unknown:
        raise ValueError(f"peers: unknown peer {', '.join(unknown)}; known: {', '.join(PEER_METHODS)}")
    return [name for name in PEER_METHODS if (section.get(name) or {}).get(PEER_SWITCH, True)]
