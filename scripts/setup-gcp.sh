#!/usr/bin/env bash
# One-time (and safe to re-run) setup of the Google Cloud resources the
# imagegen function needs: APIs, the image bucket, the Firestore database with
# its TTL policy and composite index, the OpenAI key secret and a dedicated
# runtime service account holding only the roles it needs. Prints the deploy
# command at the end.
#
# Every gcloud command is printed (prefixed with "+ ") before it runs. With
# --dry-run nothing is run at all, not even the "describe" checks: every
# resource is treated as missing and the commands that would create it are
# printed.
#
# The OpenAI API key is read from OPENAI_API_KEY, else from stdin (piped, or
# typed at a hidden prompt). It is passed to gcloud on stdin and never printed.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/setup-gcp.sh --project PROJECT_ID [options]

Options (each may also be given as the environment variable in brackets):
  --project ID            Google Cloud project ID (required) [PROJECT_ID]
  --region REGION         region for the bucket, Firestore and the function
                          (default us-central1) [REGION]
  --bucket NAME           image bucket (default <project>-imagegen) [BUCKET]
  --database ID           Firestore database (default "(default)") [FIRESTORE_DATABASE]
  --service-account NAME  runtime service account name (default imagegen-runtime)
                          [SERVICE_ACCOUNT]
  --secret-name NAME      Secret Manager secret for the OpenAI key
                          (default openai-api-key) [SECRET_NAME]
  --retention-days N      delete images N days after upload (default: keep)
                          [IMAGE_RETENTION_DAYS]
  --dry-run               print the commands without running anything
  -h, --help              show this help

The OpenAI key for a new secret comes from OPENAI_API_KEY or stdin.
EOF
}

die() {
  printf 'setup-gcp.sh: error: %s\n' "$*" >&2
  exit 1
}

note() {
  printf '# %s\n' "$*"
}

PROJECT_ID="${PROJECT_ID:-}"
REGION="${REGION:-us-central1}"
BUCKET="${BUCKET:-}"
FIRESTORE_DATABASE="${FIRESTORE_DATABASE:-(default)}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-imagegen-runtime}"
SECRET_NAME="${SECRET_NAME:-openai-api-key}"
IMAGE_RETENTION_DAYS="${IMAGE_RETENTION_DAYS:-}"
DRY_RUN=false

need_value() {
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) need_value "$@"; PROJECT_ID="$2"; shift 2 ;;
    --project=*) PROJECT_ID="${1#*=}"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift 2 ;;
    --region=*) REGION="${1#*=}"; shift ;;
    --bucket) need_value "$@"; BUCKET="$2"; shift 2 ;;
    --bucket=*) BUCKET="${1#*=}"; shift ;;
    --database) need_value "$@"; FIRESTORE_DATABASE="$2"; shift 2 ;;
    --database=*) FIRESTORE_DATABASE="${1#*=}"; shift ;;
    --service-account) need_value "$@"; SERVICE_ACCOUNT="$2"; shift 2 ;;
    --service-account=*) SERVICE_ACCOUNT="${1#*=}"; shift ;;
    --secret-name) need_value "$@"; SECRET_NAME="$2"; shift 2 ;;
    --secret-name=*) SECRET_NAME="${1#*=}"; shift ;;
    --retention-days) need_value "$@"; IMAGE_RETENTION_DAYS="$2"; shift 2 ;;
    --retention-days=*) IMAGE_RETENTION_DAYS="${1#*=}"; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# --- Validation: fail before touching anything. -------------------------------

[[ -n "$PROJECT_ID" ]] || die "the project is required: pass --project PROJECT_ID (or set PROJECT_ID)"
[[ "$PROJECT_ID" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
  die "'$PROJECT_ID' is not a valid project ID (6-30 lowercase letters, digits and hyphens)"
[[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "'$REGION' does not look like a region (e.g. us-central1)"
BUCKET="${BUCKET:-${PROJECT_ID}-imagegen}"
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || die "'$BUCKET' is not a valid bucket name"
[[ "$FIRESTORE_DATABASE" == "(default)" || "$FIRESTORE_DATABASE" =~ ^[a-z][a-z0-9-]{2,61}[a-z0-9]$ ]] ||
  die "'$FIRESTORE_DATABASE' is not a valid Firestore database ID"
[[ "$SERVICE_ACCOUNT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
  die "'$SERVICE_ACCOUNT' is not a valid service account name (6-30 lowercase letters, digits and hyphens)"
[[ "$SECRET_NAME" =~ ^[A-Za-z0-9_-]{1,255}$ ]] || die "'$SECRET_NAME' is not a valid secret name"
if [[ -n "$IMAGE_RETENTION_DAYS" ]]; then
  [[ "$IMAGE_RETENTION_DAYS" =~ ^[1-9][0-9]{0,4}$ ]] ||
    die "IMAGE_RETENTION_DAYS must be a whole number of days (1 or more), got '$IMAGE_RETENTION_DAYS'"
fi

if [[ "$DRY_RUN" == false ]]; then
  command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
fi

SA_EMAIL="${SERVICE_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
SA_MEMBER="serviceAccount:${SA_EMAIL}"

TMP_DIR="$(mktemp -d)"
trap 'rm -rf "$TMP_DIR"' EXIT

# --- Helpers -------------------------------------------------------------------

# Prints a command as one copy-pasteable line; words with shell-special
# characters are single-quoted.
print_cmd() {
  local out="+" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=" $word"
    else
      out+=" '${word//\'/\'\\\'\'}'"
    fi
  done
  printf '%s\n' "$out"
}

# Prints, then runs (unless --dry-run).
run() {
  print_cmd "$@"
  [[ "$DRY_RUN" == true ]] && return 0
  "$@"
}

# Like run, but retries a few times: IAM bindings for a service account created
# seconds ago can fail until the new account has propagated.
run_retry() {
  print_cmd "$@"
  [[ "$DRY_RUN" == true ]] && return 0
  local attempt
  for attempt in 1 2 3 4 5; do
    if "$@"; then return 0; fi
    [[ $attempt -lt 5 ]] || break
    note "retrying in $((attempt * 5))s"
    sleep $((attempt * 5))
  done
  die "command failed: $1 $2 $3 $4"
}

# exists <describe command...>: succeeds when the resource exists, fails when
# gcloud reports it missing, and stops the script on any other error (say, no
# permission), whose message is shown. In dry-run nothing exists.
exists() {
  [[ "$DRY_RUN" == true ]] && return 1
  print_cmd "$@"
  local err="$TMP_DIR/describe.err"
  if "$@" >/dev/null 2>"$err"; then
    return 0
  fi
  if grep -qiE 'not[_ ]?found|404|does not exist|unknown service account' "$err"; then
    return 1
  fi
  cat "$err" >&2
  die "could not check whether the resource exists (see the error above)"
}

# --- 1. APIs -------------------------------------------------------------------

note "Enabling APIs (already enabled ones are left as they are)"
run gcloud services enable \
  cloudfunctions.googleapis.com \
  run.googleapis.com \
  cloudbuild.googleapis.com \
  artifactregistry.googleapis.com \
  storage.googleapis.com \
  firestore.googleapis.com \
  secretmanager.googleapis.com \
  iam.googleapis.com \
  iamcredentials.googleapis.com \
  logging.googleapis.com \
  --project="$PROJECT_ID"

# --- 2. Bucket -----------------------------------------------------------------

bucket_flags=(--uniform-bucket-level-access --public-access-prevention)
if [[ -n "$IMAGE_RETENTION_DAYS" ]]; then
  lifecycle_file="$TMP_DIR/lifecycle.json"
  cat >"$lifecycle_file" <<EOF
{
  "rule": [
    {
      "action": {"type": "Delete"},
      "condition": {"age": ${IMAGE_RETENTION_DAYS}, "matchesPrefix": ["images/"]}
    }
  ]
}
EOF
  note "Lifecycle rule written to $lifecycle_file: delete images/ objects after ${IMAGE_RETENTION_DAYS} days"
  sed 's/^/#   | /' "$lifecycle_file"
  bucket_flags+=(--lifecycle-file="$lifecycle_file")
fi

if exists gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT_ID"; then
  note "Bucket gs://$BUCKET exists: enforcing uniform access and public access prevention"
  run gcloud storage buckets update "gs://$BUCKET" "${bucket_flags[@]}" --project="$PROJECT_ID"
else
  note "Creating bucket gs://$BUCKET"
  run gcloud storage buckets create "gs://$BUCKET" --location="$REGION" "${bucket_flags[@]}" \
    --project="$PROJECT_ID"
fi
if [[ -z "$IMAGE_RETENTION_DAYS" ]]; then
  note "No IMAGE_RETENTION_DAYS: images are kept until deleted (any lifecycle rule already on the bucket is left as is)"
fi

# --- 3. Firestore --------------------------------------------------------------

if exists gcloud firestore databases describe --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID"; then
  note "Firestore database $FIRESTORE_DATABASE exists"
else
  note "Creating Firestore database $FIRESTORE_DATABASE (native mode) in $REGION"
  run gcloud firestore databases create --database="$FIRESTORE_DATABASE" --location="$REGION" \
    --type=firestore-native --project="$PROJECT_ID"
fi

# Idempotency keys carry an expires_at Timestamp; the TTL policy deletes them.
ttl_state=""
if [[ "$DRY_RUN" == false ]]; then
  ttl_cmd=(gcloud firestore indexes fields describe expires_at --collection-group=idempotency
    --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" '--format=value(ttlConfig.state)')
  print_cmd "${ttl_cmd[@]}"
  ttl_state="$("${ttl_cmd[@]}" 2>/dev/null || true)"
fi
if [[ "$ttl_state" == ACTIVE || "$ttl_state" == CREATING ]]; then
  note "TTL policy on idempotency.expires_at is $ttl_state"
else
  note "Enabling the TTL policy on idempotency.expires_at (takes a few minutes to become active)"
  run gcloud firestore fields ttls update expires_at --collection-group=idempotency --enable-ttl \
    --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" --async
fi

# Job listing with a status filter: status == X order by created_at desc, __name__ desc.
# Composite indexes have no describe-by-fields, so creation is attempted and an
# ALREADY_EXISTS answer counts as success.
note "Composite index for listing jobs by status (jobs: status ASC, created_at DESC, __name__ DESC)"
index_cmd=(gcloud firestore indexes composite create --collection-group=jobs --query-scope=collection
  --field-config=field-path=status,order=ascending
  --field-config=field-path=created_at,order=descending
  --field-config=field-path=__name__,order=descending
  --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" --async)
print_cmd "${index_cmd[@]}"
if [[ "$DRY_RUN" == false ]]; then
  if ! "${index_cmd[@]}" 2>"$TMP_DIR/index.err"; then
    if grep -qiE 'already[_ ]?exists' "$TMP_DIR/index.err"; then
      note "The index already exists"
    else
      cat "$TMP_DIR/index.err" >&2
      die "could not create the jobs index"
    fi
  fi
fi
note "NOTE: listing jobs filtered by a metadata key (metadata.<key> == value, newest first) needs"
note "      one composite index per key, and another per key combined with status. For a key KEY:"
note "      gcloud firestore indexes composite create --collection-group=jobs --query-scope=collection \\"
note "        --field-config=field-path=metadata.KEY,order=ascending \\"
note "        --field-config=field-path=created_at,order=descending \\"
note "        --field-config=field-path=__name__,order=descending --database='$FIRESTORE_DATABASE' --project=$PROJECT_ID"
note "      (add --field-config=field-path=status,order=ascending first for the status + metadata filter)."
note "      Until an index exists, such queries fail with FAILED_PRECONDITION and a link that creates it."

# --- 4. Secret -----------------------------------------------------------------

if exists gcloud secrets describe "$SECRET_NAME" --project="$PROJECT_ID"; then
  note "Secret $SECRET_NAME exists and is left unchanged. To store a new key:"
  note "  gcloud secrets versions add $SECRET_NAME --data-file=- --project=$PROJECT_ID"
else
  secret_cmd=(gcloud secrets create "$SECRET_NAME" --replication-policy=automatic --project="$PROJECT_ID")
  if [[ "$DRY_RUN" == true ]]; then
    if [[ -n "${OPENAI_API_KEY:-}" ]]; then
      note "Creating secret $SECRET_NAME with the key from OPENAI_API_KEY (passed on stdin, not shown)"
    else
      note "Creating secret $SECRET_NAME with the key read from stdin (not shown)"
    fi
    print_cmd "${secret_cmd[@]}" --data-file=-
  else
    api_key="${OPENAI_API_KEY:-}"
    if [[ -z "$api_key" ]]; then
      if [[ -t 0 ]]; then
        read -r -s -p "OpenAI API key for secret $SECRET_NAME (input hidden, empty to skip): " api_key
        printf '\n' >&2
      else
        api_key="$(cat)"
      fi
    fi
    api_key="${api_key%$'\n'}"
    if [[ -n "$api_key" ]]; then
      note "Creating secret $SECRET_NAME (the key is passed on stdin, not shown)"
      print_cmd "${secret_cmd[@]}" --data-file=-
      printf '%s' "$api_key" | "${secret_cmd[@]}" --data-file=-
    else
      note "No key given: creating secret $SECRET_NAME without a version. Add the key before deploying:"
      note "  gcloud secrets versions add $SECRET_NAME --data-file=- --project=$PROJECT_ID"
      run "${secret_cmd[@]}"
    fi
    unset api_key
  fi
fi

# --- 5. Runtime service account and its roles ---------------------------------

if exists gcloud iam service-accounts describe "$SA_EMAIL" --project="$PROJECT_ID"; then
  note "Service account $SA_EMAIL exists"
else
  note "Creating service account $SA_EMAIL"
  run gcloud iam service-accounts create "$SERVICE_ACCOUNT" --display-name="imagegen function runtime" \
    --project="$PROJECT_ID"
fi

# Adding a binding that is already there changes nothing, so these are safe to repeat.
note "Granting the runtime service account only what it needs"
# Objects in this one bucket (not project-wide storage access).
run_retry gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
  --member="$SA_MEMBER" --role=roles/storage.objectAdmin --project="$PROJECT_ID"
# Firestore read/write. Firestore has no per-database IAM without conditions.
run_retry gcloud projects add-iam-policy-binding "$PROJECT_ID" \
  --member="$SA_MEMBER" --role=roles/datastore.user --condition=None
# Read this one secret.
run_retry gcloud secrets add-iam-policy-binding "$SECRET_NAME" \
  --member="$SA_MEMBER" --role=roles/secretmanager.secretAccessor --project="$PROJECT_ID"
# Sign V4 URLs through IAM signBlob as itself (it has no key file).
run_retry gcloud iam service-accounts add-iam-policy-binding "$SA_EMAIL" \
  --member="$SA_MEMBER" --role=roles/iam.serviceAccountTokenCreator --project="$PROJECT_ID"

# --- 6. Next steps ---------------------------------------------------------------

if [[ "$DRY_RUN" == true ]]; then
  note "Dry run: nothing was changed."
else
  note "Setup done."
fi
note "Next: cp env.yaml.example env.yaml and set GCS_BUCKET: \"$BUCKET\""
if [[ "$FIRESTORE_DATABASE" != "(default)" ]]; then
  note "      and FIRESTORE_DATABASE: \"$FIRESTORE_DATABASE\""
fi
note "Then deploy (or run cloudbuild.yaml):"
cat <<EOF

gcloud functions deploy imageGen --gen2 --runtime=nodejs24 --region=$REGION \\
  --source=. --entry-point=imageGen --trigger-http --no-allow-unauthenticated \\
  --service-account=$SA_EMAIL \\
  --env-vars-file=env.yaml --set-secrets=OPENAI_API_KEY=$SECRET_NAME:latest \\
  --memory=512Mi --cpu=1 --concurrency=80 --timeout=540s --max-instances=20 \\
  --project=$PROJECT_ID

EOF
note "Whoever deploys needs roles/iam.serviceAccountUser on $SA_EMAIL"
note "(for Cloud Build: its service account, plus roles/cloudfunctions.developer);"
note "callers need roles/run.invoker on the function (it does not allow unauthenticated calls)."
note "The bucket enforces public access prevention: use URL_MODE signed or proxy, not public."
