"""The methods the report compares, one row each: their names, in report order, and what
each one is. The report's rows, the plots' highlighted method and the tests take the names
from here; a test holds the report captions and the plots' styles to them."""

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
}
"""Name -> description of every report row, in report order (report_info.json lists them)."""

GENERALIST = "base"
"""The plain cross-entropy model the other methods start from."""

PROPOSED = "experts_calibrated"
"""The paper's method: the experts fused with the joint calibration."""
