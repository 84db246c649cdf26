"""The hospital's PACS as the clinic's client: a DICOM C-STORE gateway (`chexops pacs serve`) that sends each
chest radiograph it receives to the clinic endpoint's /predict and stores the findings back into the study as a
DICOM Comprehensive SR. It talks to the service only over HTTP, with the clinic's API key.

gateway (the SCP, the outbox worker), state (outbox and ledger), report (the SR), flags (urgent studies in the
PACS worklist), feedback (a verdict by study), settings (CHEXOPS_PACS_*). May import imaging and core (an
operations stage beside pipelines, delivery and infra, not those)."""
