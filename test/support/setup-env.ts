// Off GCP the auth library probes the metadata server; tests never run on GCP.
process.env.METADATA_SERVER_DETECTION = 'none';
