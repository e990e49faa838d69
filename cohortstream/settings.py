"""One typed, frozen settings object for every cohortstream process.

Built once at the edge (``cohortstream.cli.main`` or a test fixture) and passed down;
nothing reads the environment anywhere else. Every field can be set with the
environment variable ``COHORTSTREAM_<FIELD NAME IN CAPITALS>`` or from an env file
(the local stack writes ``.stack/stack.env``). The README's settings table is generated
from this class (``cohortstream settings --markdown``) and a test keeps them equal.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from cohortstream.errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "RedcapProject",
    "Settings",
    "SubjectLinkRule",
    "env_var_name",
    "file_env_var_name",
    "secret_field_names",
    "settings_environment",
    "settings_markdown_table",
    "unknown_env_vars",
]

ENV_PREFIX = "COHORTSTREAM_"


class RedcapProject(BaseModel):
    """One REDCap project whose Data Entry Triggers are accepted and whose API is read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redcap_url: str = Field(description="Base URL of the REDCap server, as REDCap sends it in `redcap_url`.")
    project_id: str = Field(description="The project's id (pid), as a string.")
    api_token: SecretStr = Field(description="API token with export rights on this project.")
    api_url: str | None = Field(None, description="API endpoint; default `<redcap_url>/api/`.")

    @field_validator("redcap_url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"redcap_url {value!r} must start with http:// or https://")
        return value.rstrip("/") + "/"

    @property
    def endpoint(self) -> str:
        """Where the REDCap API of this project answers."""
        return self.api_url or f"{self.redcap_url}api/"


class SubjectLinkRule(BaseModel):
    """A rule that links two identifiers of one subject when a record carries both.

    ``{"redcap_field": "mrn", "target": "dicom_patient_id"}``: the value of the REDCap
    field ``mrn`` is the DICOM PatientID of the same subject.
    ``{"redcap_field": "ehr_id", "target": "ehr_subject_id", "ehr_source": "mimic-iv"}``:
    the value is that subject's id in the named EHR source.
    ``{"ehr_source": "mimic-iv", "target": "dicom_patient_id"}`` (no field): the EHR
    source's subject id is itself the DICOM PatientID.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    redcap_field: str | None = None
    ehr_source: str | None = None
    target: Literal["dicom_patient_id", "ehr_subject_id"]

    @model_validator(mode="after")
    def _names_a_source(self) -> SubjectLinkRule:
        if self.redcap_field is None and self.ehr_source is None:
            raise ValueError("a subject link rule needs redcap_field or ehr_source")
        if self.target == "ehr_subject_id" and self.ehr_source is None:
            raise ValueError("a rule with target ehr_subject_id must name its ehr_source")
        if self.redcap_field is None and self.target == "ehr_subject_id":
            raise ValueError("an EHR source cannot link to itself")
        return self


class Settings(BaseSettings):
    """Everything a cohortstream process needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        env_file_encoding="utf-8",
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated host:port.",
    )
    kafka_client_id: str = Field(
        "cohortstream", description="Client id sent to Kafka; shows up in broker logs and quotas."
    )
    topic_prefix: str = Field(
        "cohortstream.",
        description="Prefix of every topic name, so several deployments can share a cluster.",
    )
    topic_partitions: int = Field(
        12,
        ge=1,
        description="Partitions of topics created by `cohortstream topics create`: the most processes of one lane "
        "that can share the work (existing topics keep theirs).",
    )
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor of created topics (3 in production)."
    )
    kafka_request_timeout_s: float = Field(
        30.0, gt=0, description="How long a producer waits for the broker's acknowledgement."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Kafka client of this process talks to the broker: `PLAINTEXT` (local default), "
        "`SSL` (TLS, with a client certificate when `kafka_ssl_certfile` is set) or `SASL_SSL` (TLS plus a "
        "SCRAM user, production; see docs/security.md).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism with `SASL_SSL`."
    )
    kafka_sasl_username: str = Field(
        "", description="Kafka user of this process with `SASL_SSL` (its ACLs decide what it may read and write)."
    )
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="Password of `kafka_sasl_username` (or `COHORTSTREAM_KAFKA_SASL_PASSWORD_FILE`)."
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM file of the CA that signed the broker's certificate; unset: the system's CAs."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (mutual TLS), with `kafka_ssl_keyfile`; unset: none sent."
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of `kafka_ssl_certfile`.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host in `kafka_bootstrap`."
    )

    # --- Stream processing (faust) -------------------------------------------------------
    app_id: str = Field(
        "cohortstream",
        description="Faust application id: the consumer group and the prefix of table changelog topics.",
    )
    data_dir: Path = Field(Path(".stack/app"), description="Directory for the worker's local state (table stores).")
    table_store: str = Field(
        "memory://",
        description="Faust table store URL; tables are rebuilt from their changelog topics on start.",
    )

    # --- MongoDB API (secantusd-rs locally, MongoDB in deployment) -------------------------
    mongo_url: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017/"),
        description="MongoDB connection string (may hold credentials, so it is kept secret).",
    )
    mongo_database: str = Field("cohortstream", description="Database holding the views.")

    # --- Orthanc -----------------------------------------------------------------------
    orthanc_url: str = Field(
        "http://127.0.0.1:8042", description="Orthanc REST API base URL (DICOMweb under /dicom-web/)."
    )
    orthanc_username: str = Field("cohortstream", description="Orthanc HTTP user.")
    orthanc_password: SecretStr = Field(
        SecretStr(""), description="Orthanc HTTP password (the local stack generates one)."
    )
    orthanc_aet: str = Field("ORTHANC", max_length=16, description="Orthanc's DICOM AE title.")
    orthanc_dicom_port: int = Field(4242, ge=1, le=65535, description="Orthanc's DICOM port.")
    orthanc_timeout_s: float = Field(60.0, gt=0, description="Timeout of one Orthanc HTTP request.")

    # --- Orthanc change feed (instances that reach Orthanc by any route) -------------------
    orthanc_feed_start: Literal["backfill", "now"] = Field(
        "backfill",
        description="Where the change feed begins when it has no checkpoint yet: `backfill` publishes every change "
        "Orthanc still keeps (then run `cohortstream orthanc reconcile` for what its change log no longer holds), "
        "`now` only what arrives from now on.",
    )
    orthanc_feed_page_size: int = Field(
        1000,
        ge=1,
        le=10000,
        description="Changes read from Orthanc's `/changes` per request (and published per batch).",
    )
    orthanc_feed_poll_interval_s: float = Field(
        0.1, gt=0, le=60, description="Pause between two reads of `/changes` once the feed has caught up with Orthanc."
    )
    orthanc_feed_skip_known: bool = Field(
        True,
        description="Leave out instances the DICOM views already hold (they came through our listener, whose "
        "archive agent stored them in Orthanc): one view-store query per page instead of a second event for each. "
        "Off: every instance is published again (harmless, the sinks are idempotent).",
    )
    orthanc_feed_host: str = Field("127.0.0.1", description="Address of the change feed's `/healthz` and `/metrics`.")
    orthanc_feed_port: int = Field(
        8092, ge=0, le=65535, description="Port of the change feed's `/healthz` and `/metrics`; 0: off."
    )

    # --- DICOM listener (C-STORE SCP) ---------------------------------------------------
    dicom_scp_aet: str = Field(
        "COHORTSTREAM", min_length=1, max_length=16, description="AE title of our C-STORE listener."
    )
    dicom_scp_host: str = Field("127.0.0.1", description="Address the listener binds to.")
    dicom_scp_port: int = Field(11112, ge=1, le=65535, description="Port the listener binds to.")
    dicom_scp_allowed_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Calling AE titles allowed to connect, comma-separated. Empty accepts every caller: "
        "for development only.",
    )
    dicom_scp_max_associations: int = Field(
        16,
        ge=1,
        description="Associations served at the same time by each listener process; more are rejected (transient).",
    )
    dicom_scp_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Listener processes sharing the DICOM port (Linux SO_REUSEPORT: the kernel spreads "
        "associations across them). Helps with several concurrent associations on several cores; one "
        "association is always served by one process.",
    )
    dicom_scp_prompt_associations: int = Field(
        4,
        ge=0,
        description="Up to this many concurrent associations per listener process wake as soon as a PDU "
        "arrives, a PDU is queued or a request is complete, instead of polling every millisecond; with more "
        "active, every association polls as pynetdicom does (0: always pynetdicom's polling). docs/dicom.md "
        "has the figures.",
    )
    dicom_scp_publish_timeout_s: float = Field(
        30.0, gt=0, description="How long a C-STORE waits for Kafka's acknowledgement before failing (0xA700)."
    )
    dicom_scp_plaintext: bool = Field(
        True,
        description="Serve plain DICOM on `dicom_scp_port`; off: only the TLS port answers (turn it off in production "
        "once every sender speaks TLS).",
    )
    dicom_scp_tls_port: int = Field(
        0, ge=0, le=65535, description="Port of the listener's DICOM TLS server (needs the cert and key); 0: no TLS."
    )
    dicom_scp_tls_certfile: Path | None = Field(None, description="PEM certificate chain of the DICOM TLS server.")
    dicom_scp_tls_keyfile: Path | None = Field(None, description="PEM private key of the DICOM TLS server.")
    dicom_scp_tls_cafile: Path | None = Field(
        None,
        description="PEM CA bundle: when set, a DICOM TLS caller must present a certificate it signed (mutual TLS, "
        "the IHE ATNA secure node profile); unset: any caller the AE title list accepts.",
    )
    staging_dir: Path = Field(
        Path(".stack/staging"),
        description="Content-addressed store of received DICOM files (claim check); sinks read from here.",
    )
    quarantine_dir: Path = Field(
        Path(".stack/quarantine"), description="Where unreadable received data is kept for inspection."
    )

    # --- Stream processing of DICOM ---------------------------------------------------
    series_quiet_period_s: float = Field(
        30.0, gt=0, description="A series with no new instance for this long is 'completed'."
    )
    dicom_views_batch_wait_s: float = Field(
        0.2,
        gt=0,
        le=5,
        description="Longest wait of the DICOM views agent for a batch to fill (1,000 events): it applies what "
        "arrived when this runs out, and a full batch at once, so batches grow with the backlog.",
    )
    archive_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Instances the archive agent stores in Orthanc at the same time; offsets are committed only up "
        "to the first instance not stored yet.",
    )
    sink_retry_attempts: int = Field(
        5, ge=1, description="Fast retries of a failing sink call before the agent pauses and backs off."
    )
    sink_retry_max_delay_s: float = Field(
        30.0, gt=0, description="Longest wait between retries of a sink while its service is down."
    )
    sink_error_attempts: int = Field(
        3,
        ge=1,
        description="Tries of a sink call that fails with an error other than lost connectivity (a duplicate key, "
        "a refused or unparsable reply) before its events are dead-lettered; only lost connectivity is retried "
        "without end (backpressure).",
    )
    consumer_stall_after_s: float = Field(
        120.0,
        gt=0,
        description="A consumer group whose lag on a topic is above 0 and whose committed offset has not moved for "
        "this long is reported as stalled (/readyz 'degraded', metric cohortstream_consumer_stalled).",
    )
    consumer_fetch_min_bytes: int = Field(
        65536,
        ge=1,
        description="A worker lane's Kafka fetch returns once this many bytes of new messages are there, or after "
        "its wait (`consumer_fetch_max_wait_s`, `archive_fetch_max_wait_s`): fewer, fuller fetches. Fetching at the "
        "first byte (faust's way), a worker that kept up woke per message and spent about twice the CPU per "
        "instance (lanes and broker) of one working through a backlog (bench/README.md).",
    )
    consumer_fetch_max_wait_s: float = Field(
        0.5,
        ge=0.01,
        le=1.5,
        description="Longest wait of a worker lane's Kafka fetch for `consumer_fetch_min_bytes`: at most this much "
        "latency added to the lane, and an idle lane fetches this often. The archive lane has its own.",
    )
    archive_fetch_max_wait_s: float = Field(
        0.1,
        ge=0.01,
        le=1.5,
        description="`consumer_fetch_max_wait_s` of the `dicom-archive` lane, the one between an acknowledged "
        "instance and its `in_orthanc` mark.",
    )
    worker_replicas: int = Field(
        1,
        ge=1,
        le=16,
        description="Processes per lane that `cohortstream worker` runs, all in the lane's consumer group (the "
        "partitions are split between them); worth it with topics of several partitions (COHORTSTREAM_TOPIC_PARTITIONS).",
    )
    worker_shutdown_timeout_s: float = Field(
        15.0,
        gt=0,
        description="How long the worker waits for its lanes to stop cleanly after SIGTERM before it kills them.",
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="First port of the worker's Prometheus endpoints on 127.0.0.1 (sink latency, retries, pauses): "
        "lane i of the worker serves on this port + i; 0: off.",
    )
    annotator_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the annotation worker's Prometheus endpoint on 127.0.0.1; 0: off."
    )

    # --- REDCap --------------------------------------------------------------------------
    redcap_projects: list[RedcapProject] = Field(
        default_factory=list,
        description='Accepted REDCap projects, as JSON: `[{"redcap_url": "https://redcap.example.org/", '
        '"project_id": "12", "api_token": "..."}]`. Triggers for any other project or server get 403.',
    )
    redcap_trigger_secret: SecretStr = Field(
        SecretStr(""),
        description="If set, a Data Entry Trigger must carry `?secret=<value>` in its URL (set it in the "
        "trigger URL in REDCap); REDCap signs nothing, so this and the network list are the only checks.",
    )
    redcap_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Source addresses allowed to post triggers, comma-separated CIDRs. Empty accepts every address.",
    )
    redcap_webhook_host: str = Field("127.0.0.1", description="Address the REDCap trigger endpoint binds to.")
    redcap_webhook_port: int = Field(8091, ge=1, le=65535, description="Port of the REDCap trigger endpoint.")
    redcap_api_timeout_s: float = Field(30.0, gt=0, description="Timeout of one REDCap API request.")
    redcap_metadata_ttl_s: float = Field(
        300.0, ge=0, description="How long a project's data dictionary is cached before it is read again."
    )
    # --- Subjects and EHR ------------------------------------------------------------
    subject_link_rules: list[SubjectLinkRule] = Field(
        default_factory=list,
        description='Rules that link identifiers of one subject, as JSON, e.g. `[{"redcap_field": "mrn", '
        '"target": "dicom_patient_id"}]` (see the README, "Subjects").',
    )
    # --- Annotation -------------------------------------------------------------------
    annotation_models_dir: str = Field(
        "",
        description="Directory of model weights: `<dir>/<model name>/` (a MONAI bundle) or `<dir>/<weights file>`. "
        "Empty: the weights shipped in `consumers/annotation/weights/`.",
    )
    annotation_model_paths: dict[str, Path] = Field(
        default_factory=dict,
        description='Per-model weights path (file or bundle directory), as JSON: `{"phantom-sphere-unet": "/models/x.pt"}`; '
        "wins over `annotation_models_dir`.",
    )
    annotation_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where inference runs: `auto` takes CUDA when torch sees a GPU, else the CPU."
    )
    annotation_cpu_threads: int = Field(
        1, ge=1, description="Torch threads for CPU inference, so the worker leaves cores to the other processes."
    )
    annotation_sw_batch_size: int = Field(
        4, ge=1, description="Sliding-window patches inferred in one batch (raise it on a GPU)."
    )
    annotation_roi_size: list[int] = Field(
        default_factory=list,
        description="Sliding-window patch size (slices, rows, columns) as JSON, e.g. `[48, 48, 48]`; empty: the model's own.",
    )
    annotation_overlap: float = Field(
        0.25, ge=0, lt=1, description="Overlap of neighbouring sliding-window patches (fraction of the patch)."
    )
    annotation_amp: bool = Field(True, description="Mixed precision (float16 autocast) for inference on CUDA.")

    # --- Retrieval API ----------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the retrieval/review API (`cohortstream api`) binds to.")
    api_port: int = Field(
        8090, ge=1, le=65535, description="Port of the retrieval/review API (also the MONAI Label server URL for OHIF)."
    )
    api_tls_certfile: Path | None = Field(
        None, description="PEM certificate chain: set with `api_tls_keyfile`, the API serves HTTPS only and sends HSTS."
    )
    api_tls_keyfile: Path | None = Field(None, description="PEM private key of `api_tls_certfile`.")
    api_hsts_max_age_s: int = Field(
        31536000, ge=0, description="`max-age` of the `Strict-Transport-Security` header sent over HTTPS."
    )
    api_key_cache_ttl_s: float = Field(
        30.0,
        ge=0,
        description="How long the API trusts a verified API key before checking it again: a revoked key "
        "keeps working in a running API for at most this long (0: check every request).",
    )
    api_session_ttl_s: float = Field(
        8 * 3600.0,
        gt=0,
        description="Lifetime of a browser session made at `/login` (the viewer's cookie); the key's "
        "revocation ends its sessions at once.",
    )
    ohif_dir: Path | None = Field(
        None,
        description="The OHIF viewer build the API serves at `/ohif/`; unset: "
        "`$COHORTSTREAM_CACHE_DIR/ohif/monailabel-0.8.5/ohif` (or `~/.cache/cohortstream/...`), where "
        "`deploy/install_ohif.sh` (run by `make up`) puts it.",
    )
    api_readiness_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait for each dependency (Kafka, MongoDB, Orthanc) in `/readyz` and `/metrics`.",
    )

    # --- audit trail and abuse limits (docs/audit.md) ------------------------------------
    audit_max_subject_ids: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="Most subject ids one audit event lists; a larger access records the count and "
        "`subject_ids_truncated`.",
    )
    api_auth_failures_per_minute: int = Field(
        20,
        ge=1,
        description="Failed API-key attempts allowed per source address in a sliding minute; more answer 429 "
        "with `Retry-After` until the window has room again.",
    )
    api_max_query_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest body of a JSON request to the API (cohort query and export, reviews, BIDS export jobs); "
        "larger answers 413.",
    )
    api_max_seg_upload_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="Largest body of a corrected-SEG upload or a DICOMweb STOW through the proxy; larger answers 413.",
    )
    api_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest time a client may take to send a whole request body (API and REDCap trigger endpoint); "
        "a client that trickles it (slow-loris) gets 408 and its connection is closed. It covers SEG uploads too: "
        "raise it when large uploads come over slow links.",
    )
    redcap_trigger_max_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest Data Entry Trigger body the REDCap endpoint reads (REDCap sends a few hundred bytes); "
        "larger answers 413.",
    )
    dicom_scp_max_object_bytes: int = Field(
        2 * 1024 * 1024 * 1024,
        ge=1024,
        description="Largest DICOM object the listener accepts; a larger one is refused with C-STORE status "
        "0xA700 (out of resources), deleted and logged.",
    )

    # --- BIDS export ---------------------------------------------------------------------
    bids_pseudonym_key: SecretStr = Field(
        SecretStr(""),
        description="Secret key of the keyed (HMAC-SHA256) mapping from subject id to BIDS `sub-` label; the same key "
        "gives the same labels in every export. Required while `bids_pseudonymise` is on; keep it outside the export.",
    )
    bids_pseudonymise: bool = Field(
        True,
        description="Label subjects with keyed pseudonyms; off: the registry's subject id (which holds no identifier).",
    )
    bids_pseudonym_length: int = Field(
        10, ge=6, le=32, description="Characters of a pseudonymous `sub-` label ([a-z2-7])."
    )
    bids_session_label: Literal["ordinal", "date"] = Field(
        "ordinal",
        description="`ses-` label of each DICOM study: `ordinal` (01, 02 … by study date) or `date` (the shifted study "
        "date, YYYYMMDD).",
    )
    bids_date_shift_years: int = Field(
        150,
        ge=0,
        le=300,
        description="Dates in the export (acq_time, REDCap dates) move back by this many years plus a keyed 0-364 day "
        "jitter per subject, keeping intervals within a subject; 0 writes real dates.",
    )
    bids_mapping_rules: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Series to BIDS mapping rules as JSON, first match wins, e.g. `[{"match": {"SeriesDescription": '
        '"(?i)mprage"}, "datatype": "anat", "suffix": "T1w"}]`; empty: the built-in rules '
        '(see the README, "BIDS export").',
    )
    bids_mapping_rules_file: str = Field(
        "", description="JSON file with mapping rules; wins over `bids_mapping_rules` when set."
    )
    bids_phenotype_drop_fields: list[str] = Field(
        default_factory=lambda: [
            "name",
            "first_name",
            "last_name",
            "dob",
            "birth_date",
            "date_of_birth",
            "email",
            "phone",
            "address",
            "zip",
            "ssn",
            "mrn",
        ],
        description="REDCap fields never written to `phenotype/` (besides the record id, link-rule fields and fields the "
        "data dictionary flags as identifiers), as JSON.",
    )
    bids_keep_free_text: bool = Field(
        False,
        description="Keep free-text REDCap fields (notes, unvalidated text) in `phenotype/`, flagged 'free text: review "
        "before sharing' in the sidecar; off: they are left out and the export report lists them.",
    )
    bids_dataset_name: str = Field(
        "cohortstream cohort export", description="`Name` in the export's dataset_description.json."
    )
    bids_dataset_license: str = Field(
        "",
        description="`License` in dataset_description.json (e.g. `CC0`, or the data use agreement's name); empty: left out.",
    )
    bids_dataset_authors: list[str] = Field(
        default_factory=list, description='`Authors` in dataset_description.json, as JSON: `["A. Researcher"]`.'
    )
    bids_export_root: Path = Field(
        Path(".stack/exports"),
        description="Where export jobs started through the API write (`<root>/<name>/`); the CLI takes any OUTDIR.",
    )
    bids_dcm2niix: str = Field("dcm2niix", description="The dcm2niix executable used to convert series to NIfTI.")
    bids_dcm2niix_timeout_s: float = Field(600.0, gt=0, description="Longest run of dcm2niix for one series.")

    # --- Features (issue 18) ----------------------------------------------------------------
    features_spec_file: str = Field(
        "",
        description="The feature spec (YAML or JSON, schema in docs/features.md); empty: the packaged default. "
        "After changing it run `cohortstream features rebuild`.",
    )
    features_delay_s: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Longest wait from a subject's first unprocessed event to its updated feature document: events "
        "arriving within it are folded into one recomputation (the debounce).",
    )
    features_link_grace_s: float = Field(
        10.0,
        ge=0,
        description="After writing a subject's features, check its registry links once more this much later and "
        "recompute if a link made meanwhile changed the subject (the view lanes link in parallel).",
    )

    # --- Logging -----------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum level of log records.")
    log_format: Literal["json", "console"] = Field(
        "json", description="`json`: one JSON object per line (for collectors); `console`: for people."
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("kafka_bootstrap is empty; expected host:port[,host:port]")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"kafka_bootstrap entry {server!r} is not host:port")
        return ",".join(servers)

    @field_validator("dicom_scp_allowed_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dicom_scp_allowed_aets")
    @classmethod
    def _aets_are_valid(cls, value: list[str]) -> list[str]:
        for aet in value:
            if len(aet) > 16:
                raise ValueError(f"AE title {aet!r} is longer than 16 characters")
        return value

    @field_validator("redcap_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redcap_allowed_networks")
    @classmethod
    def _networks_are_valid(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"redcap_allowed_networks entry {network!r} is not an address or CIDR") from exc
        return value

    @field_validator("orthanc_url")
    @classmethod
    def _orthanc_url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"orthanc_url {value!r} must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_pairs_are_complete(self) -> Settings:
        pairs = (
            ("kafka_ssl_certfile", "kafka_ssl_keyfile"),
            ("dicom_scp_tls_certfile", "dicom_scp_tls_keyfile"),
            ("api_tls_certfile", "api_tls_keyfile"),
        )
        for cert, key in pairs:
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{env_var_name(cert)} and {env_var_name(key)} must be set together")
        if self.dicom_scp_tls_port and self.dicom_scp_tls_certfile is None:
            raise ValueError(
                "COHORTSTREAM_DICOM_SCP_TLS_PORT is set but COHORTSTREAM_DICOM_SCP_TLS_CERTFILE/_KEYFILE are not"
            )
        if not self.dicom_scp_plaintext and not self.dicom_scp_tls_port:
            raise ValueError(
                "COHORTSTREAM_DICOM_SCP_PLAINTEXT is off and COHORTSTREAM_DICOM_SCP_TLS_PORT is 0: the listener "
                "would serve nothing"
            )
        if self.kafka_security_protocol == "SASL_SSL" and not self.kafka_sasl_username:
            raise ValueError("COHORTSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs COHORTSTREAM_KAFKA_SASL_USERNAME")
        return self

    @property
    def api_tls(self) -> bool:
        """Whether the API serves HTTPS."""
        return self.api_tls_certfile is not None

    @property
    def kafka_bootstrap_servers(self) -> list[str]:
        """The bootstrap servers as a list, the form aiokafka and faust take."""
        return self.kafka_bootstrap.split(",")

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic name such as ``dicom.instance-received``."""
        return f"{self.topic_prefix}{name}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then the environment, then ``COHORTSTREAM_<SECRET>_FILE`` files, then the env file."""
        files = _SecretFilesSource(settings_cls, dotenv_settings)
        return init_settings, env_settings, files, dotenv_settings, file_secret_settings

    @classmethod
    def load(cls, env_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, an optional env file, then explicit overrides.

        A missing env file is an error rather than silently ignored: a typo in the path
        would otherwise connect to the wrong services.
        """
        if env_file is not None and not Path(env_file).is_file():
            raise ConfigurationError(f"env file {env_file} does not exist")
        return cls(_env_file=env_file, **overrides)


def secret_field_names() -> tuple[str, ...]:
    """Settings that may hold a secret: every ``SecretStr`` field and ``redcap_projects``
    (its API tokens). Each can also be read from a file (:func:`file_env_var_name`)."""
    names = [name for name, field in Settings.model_fields.items() if field.annotation is SecretStr]
    return (*names, "redcap_projects")


def file_env_var_name(field_name: str) -> str:
    """The variable naming a file that holds ``field_name``'s value (Docker/Kubernetes secrets)."""
    return f"{env_var_name(field_name)}_FILE"


class _SecretFilesSource(PydanticBaseSettingsSource):
    """Secrets read from files: ``COHORTSTREAM_<NAME>_FILE=/run/secrets/x`` sets ``<name>``
    to the file's content (one trailing newline dropped), so a secret never has to sit in
    an environment variable or a command line, where ``ps`` and crash dumps show it.

    The variable may be in the environment or in the env file; setting both the value
    and its file is refused as ambiguous.
    """

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._dotenv_vars: dict[str, str | None] = {}
        if isinstance(dotenv, DotEnvSettingsSource):
            # The env file's *_FILE lines are ours: take them out of the dotenv source, which
            # would otherwise reject them as unknown settings (extra="forbid").
            wanted = {file_env_var_name(name).lower() for name in secret_field_names()}
            self._dotenv_vars = {k: v for k, v in dotenv.env_vars.items() if k.lower() in wanted}
            dotenv.env_vars = {k: v for k, v in dotenv.env_vars.items() if k.lower() not in wanted}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in secret_field_names():
            variable = file_env_var_name(name)
            in_environment = os.environ.get(variable)
            if in_environment is not None:  # set, even empty (no file: what a parent passes down)
                if in_environment and os.environ.get(env_var_name(name)):
                    raise ConfigurationError(f"set {env_var_name(name)} or {variable}, not both")
                path = in_environment
            elif os.environ.get(env_var_name(name)):
                continue  # the environment's value outranks a file named in the env file
            else:
                path = self._dotenv_vars.get(variable.lower()) or ""
            if not path:
                continue
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
            text = text[:-1] if text.endswith("\n") else text
            values[name] = json.loads(text) if name == "redcap_projects" else text
        return values


def settings_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that rebuild ``settings`` in a child process (secrets included).

    Lists of plain strings are written comma-separated (as people write them); lists of
    models as JSON, the form pydantic-settings parses for complex fields.
    """
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue  # unset: the child gets the default, None for every optional setting
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list) and any(meta is NoDecode for meta in field.metadata):
            text = ",".join(value)
        elif isinstance(value, list):
            text = json.dumps([_revealed(item) for item in value])
        else:
            text = str(value)
        env[env_var_name(name)] = text
    # The child gets each secret's value above: a *_FILE variable it would inherit from
    # this process must not name a second source (refused as ambiguous).
    env.update({file_env_var_name(name): "" for name in secret_field_names()})
    return env


def _revealed(item: Any) -> Any:
    if isinstance(item, BaseModel):
        return {k: _revealed(getattr(item, k)) for k in type(item).model_fields}
    if isinstance(item, SecretStr):
        return item.get_secret_value()
    return item


def env_var_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return f"{ENV_PREFIX}{field_name.upper()}"


#: Variables with our prefix that the project itself reads outside the settings class:
#: the CLI's settings file, the Makefile's install cache.
_NON_SETTINGS_VARS = frozenset({"COHORTSTREAM_ENV_FILE", "COHORTSTREAM_CACHE_DIR"})
#: Prefixes of such variables: the local stack's scripts (``deploy/stack.sh``,
#: ``deploy/lib/``) and the test runner and tests (``tests/run.sh``, ``tests/``).
_NON_SETTINGS_PREFIXES = (f"{ENV_PREFIX}STACK_", f"{ENV_PREFIX}TEST_")


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """Variables that carry our prefix but match no setting and are not one of the
    project's own tool variables (:data:`_NON_SETTINGS_VARS`, :data:`_NON_SETTINGS_PREFIXES`):
    almost always a typo."""
    environ = os.environ if environ is None else environ
    known = {env_var_name(name) for name in Settings.model_fields}
    known |= {file_env_var_name(name) for name in secret_field_names()}
    return sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and key not in known
        and key not in _NON_SETTINGS_VARS
        and not key.startswith(_NON_SETTINGS_PREFIXES)
    )


def _default_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        # Defaults live in the code, so none of them is a real secret worth hiding.
        value = value.get_secret_value()
        if not value:
            return "(empty)"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{value}`"


def settings_markdown_table() -> str:
    """The README's settings table, generated from :class:`Settings` so the docs cannot drift."""
    rows = ["| environment variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        type_name = getattr(annotation, "__name__", None) or str(annotation)
        if type_name == "Literal":
            type_name = " \\| ".join(f"`{a}`" for a in annotation.__args__)  # type: ignore[union-attr]
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or None
        rows.append(
            f"| `{env_var_name(name)}` | {type_name} | {_default_text(default) if default is not None else '(empty)'} "
            f"| {field.description or ''} |"
        )
    return "\n".join(rows) + "\n"
