"""z3 proofs of the tdx_guest error-path invariants, tied to the emulator (layer 5).

Layout:
- ``abi``: z3 constants derived from ``tdxmodel.abi`` (no ABI literal anywhere in proofs/);
- ``symbolic``: the vocabulary the encodings are written in (paths, buffers, user copies, provenance);
- ``module_leaves``: TDG.MR.REPORT and TDG.MR.RTMR.EXTEND (ref §4.3, §4.6) and theorem 6;
- ``v4_2022_04``, ``v6_2``, ``v6_16``: one encoding per driver generation (ref §2.2, §2.4, §2.5);
- ``interleave``: two callers interleaved, for theorem 7;
- ``theorems``: the seven theorems, stated once, instantiated per driver;
- ``expected`` and ``expected_sat/``: expected counterexamples (with citations) and wrong encodings;
- ``engine``, ``runner``, ``__main__``: solving, the matrix, ``python -m proofs``;
- ``outcome``, ``replay``: one concrete case in z3 and on the emulator, run by the campaign's one runner
  (``tdxmodel.campaign.run_case``);
- the quote path: ``quote_path`` (one configfs-tsm request as terms, per generation with a quote path),
  ``quote_theorems`` (the six quote theorems, each a conjunction of named parts, per host assumption
  ``qemu`` / ``any``, with their expected failing parts), ``quote_runner`` and ``quote_replay``
  (counterexamples as campaign quote cases, run by ``run_case``); the ioctl quote paths (v4 3/3,
  Intel downstream): ``quote_ioctl`` (one get_quote ioctl as terms, from ``profiles.IoctlQuote``), the
  same six theorems in ``quote_theorems`` (``IOCTL_BUILDERS``) and ``quote_ioctl_replay``
  (``campaign_quote_ioctl`` cases).
"""
