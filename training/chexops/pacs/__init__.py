"""The hospital's PACS as the clinic's client: a DICOM C-STORE gateway (`chexops pacs serve`) that sends each
chest radiograph it receives to the clinic endpoint's /predict and stores the findings back into the study as a
DICOM Comprehensive SR. It talks to the service only over HTTP, with the clinic's API key."""
