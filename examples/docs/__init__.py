"""The code samples of the older docs/ pages, one module per page, run by
tests/integration/test_doc_samples.py. Sections between ``# --8<-- [start:NAME]`` and
``# --8<-- [end:NAME]`` are included in the pages with pymdownx.snippets
(``dedent_subsections``: a section inside a function is shown without the function's
indentation)."""
