"""The evidence pack: one signed zip an auditor checks offline with the verifier key alone.

``make_pack`` (:mod:`audit_core.evidence.pack`) gathers a period's evidence from a ledger
(:mod:`audit_core.evidence.collect`): verification, signed checkpoints and the RFC 9162
consistency proof between the period's first and last, inclusion proofs for a sample the
operator cannot choose (:mod:`audit_core.evidence.sample`), every failure, access,
permission-change and erasure record in full, completeness, Object Lock retention
(:mod:`audit_core.evidence.retention`) and one section per control
(:mod:`audit_core.evidence.controls`), rendered to HTML and PDF from one template
(:mod:`audit_core.evidence.render`). ``verify_pack`` (:mod:`audit_core.evidence.check`)
checks a pack with nothing but the pack and the verifier key.
"""
