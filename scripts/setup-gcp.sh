#!/usr/bin/env bash
# One-time (and safe to re-run) setup of the Google Cloud resources the
# imagegen function needs: APIs, the image bucket, the Firestore database with
# its TTL policies and composite indexes, the OpenAI key secret, a dedicated
# runtime service account holding only the roles it needs, and the Cloud
# Scheduler job (with its own service account) that calls the function's
# reconciler. Prints the deploy command at the end, and the one grant to make
# after the first deploy.
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
  --scheduler-account NAME
                          service account Cloud Scheduler calls the reconciler
                          as (default imagegen-scheduler) [SCHEDULER_ACCOUNT]
  --function-url URL      the deployed function's https URL, for another
                          function name or a custom domain (default
                          https://<region>-<project>.cloudfunctions.net/imageGen)
                          [FUNCTION_URL]
  --edit-source-buckets LIST
                          comma-separated buckets (besides --bucket) whose
                          objects edits may read as gs:// sources; the runtime
                          account gets read access to objects in each, and
                          nothing else [EDIT_SOURCE_BUCKETS]
  --reconcile-schedule CRON
                          how often the reconciler runs, five cron fields in
                          UTC (default '*/10 * * * *') [RECONCILE_SCHEDULE]
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
SCHEDULER_ACCOUNT="${SCHEDULER_ACCOUNT:-imagegen-scheduler}"
FUNCTION_URL="${FUNCTION_URL:-}"
RECONCILE_SCHEDULE="${RECONCILE_SCHEDULE:-*/10 * * * *}"
EDIT_SOURCE_BUCKETS="${EDIT_SOURCE_BUCKETS:-}"
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
    --scheduler-account) need_value "$@"; SCHEDULER_ACCOUNT="$2"; shift 2 ;;
    --scheduler-account=*) SCHEDULER_ACCOUNT="${1#*=}"; shift ;;
    --function-url) need_value "$@"; FUNCTION_URL="$2"; shift 2 ;;
    --function-url=*) FUNCTION_URL="${1#*=}"; shift ;;
    --edit-source-buckets) need_value "$@"; EDIT_SOURCE_BUCKETS="$2"; shift 2 ;;
    --edit-source-buckets=*) EDIT_SOURCE_BUCKETS="${1#*=}"; shift ;;
    --reconcile-schedule) need_value "$@"; RECONCILE_SCHEDULE="$2"; shift 2 ;;
    --reconcile-schedule=*) RECONCILE_SCHEDULE="${1#*=}"; shift ;;
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
[[ "$SCHEDULER_ACCOUNT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
  die "'$SCHEDULER_ACCOUNT' is not a valid service account name (6-30 lowercase letters, digits and hyphens)"
[[ "$SCHEDULER_ACCOUNT" != "$SERVICE_ACCOUNT" ]] ||
  die "the scheduler account must not be the runtime service account ('$SERVICE_ACCOUNT')"
# The function's base URL: the reconciler's path is appended to it, and it is
# the audience of the scheduler's ID token.
FUNCTION_URL_DEFAULT="https://${REGION}-${PROJECT_ID}.cloudfunctions.net/imageGen"
FUNCTION_URL="${FUNCTION_URL:-$FUNCTION_URL_DEFAULT}"
FUNCTION_URL="${FUNCTION_URL%/}"
[[ "$FUNCTION_URL" =~ ^https://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*$ ]] ||
  die "FUNCTION_URL must be an https URL with no query or fragment (e.g. $FUNCTION_URL_DEFAULT), got '$FUNCTION_URL'"
[[ "$FUNCTION_URL" != */tasks/reconcile ]] ||
  die "FUNCTION_URL is the function's base URL; /tasks/reconcile is added to it (got '$FUNCTION_URL')"
cron_field='[A-Za-z0-9*/,-]+'
cron_re="^ *${cron_field}( +${cron_field}){4} *\$"
[[ "$RECONCILE_SCHEDULE" =~ $cron_re ]] ||
  die "RECONCILE_SCHEDULE must be a cron schedule of five fields (minute hour day month weekday, e.g. '*/10 * * * *'), got '$RECONCILE_SCHEDULE'"

SOURCE_BUCKETS=()
if [[ -n "$EDIT_SOURCE_BUCKETS" ]]; then
  IFS=',' read -r -a listed <<<"$EDIT_SOURCE_BUCKETS"
  for source in "${listed[@]}"; do
    source="${source// /}"
    [[ -n "$source" ]] || continue
    [[ "$source" =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] ||
      die "EDIT_SOURCE_BUCKETS: '$source' is not a valid bucket name (give names, not gs:// URIs)"
    [[ "$source" != "$BUCKET" ]] || continue
    SOURCE_BUCKETS+=("$source")
  done
fi

if [[ "$DRY_RUN" == false ]]; then
  command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
fi

SA_EMAIL="${SERVICE_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
SA_MEMBER="serviceAccount:${SA_EMAIL}"
SCHEDULER_EMAIL="${SCHEDULER_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
RECONCILE_JOB=imagegen-reconcile
RECONCILE_URL="${FUNCTION_URL}/tasks/reconcile"

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
  cloudscheduler.googleapis.com \
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

# ensure_ttl COLLECTION_GROUP: turns on the TTL policy that deletes the group's
# documents once their expires_at Timestamp has passed; left alone when it is
# already ACTIVE or CREATING.
ensure_ttl() {
  local group="$1" state=""
  if [[ "$DRY_RUN" == false ]]; then
    local describe=(gcloud firestore indexes fields describe expires_at --collection-group="$group"
      --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" '--format=value(ttlConfig.state)')
    print_cmd "${describe[@]}"
    state="$("${describe[@]}" 2>/dev/null || true)"
  fi
  if [[ "$state" == ACTIVE || "$state" == CREATING ]]; then
    note "TTL policy on $group.expires_at is $state"
  else
    note "Enabling the TTL policy on $group.expires_at (takes a few minutes to become active)"
    run gcloud firestore fields ttls update expires_at --collection-group="$group" --enable-ttl \
      --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" --async
  fi
}

# Idempotency keys; per-caller daily quota counters and the reservations made
# against them (both expire two days after their day).
ensure_ttl idempotency
ensure_ttl quotas
ensure_ttl quota_reservations

# create_index COLLECTION_GROUP PURPOSE FIELD:ORDER...: creates a composite index.
# Composite indexes have no describe-by-fields, so creation is attempted and an
# ALREADY_EXISTS answer counts as success.
create_index() {
  local group="$1" purpose="$2" spec field order shown=""
  shift 2
  local cmd=(gcloud firestore indexes composite create --collection-group="$group" --query-scope=collection)
  for spec in "$@"; do
    field="${spec%%:*}"
    order="${spec#*:}"
    cmd+=("--field-config=field-path=${field},order=${order}")
    if [[ "$order" == ascending ]]; then shown+=", $field ASC"; else shown+=", $field DESC"; fi
  done
  cmd+=(--database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" --async)
  note "Composite index for $purpose ($group: ${shown#, })"
  print_cmd "${cmd[@]}"
  [[ "$DRY_RUN" == true ]] && return 0
  if ! "${cmd[@]}" 2>"$TMP_DIR/index.err"; then
    if grep -qiE 'already[_ ]?exists' "$TMP_DIR/index.err"; then
      note "The index already exists"
    else
      cat "$TMP_DIR/index.err" >&2
      die "could not create the $group index for $purpose"
    fi
  fi
}

# status == X order by created_at desc, __name__ desc
create_index jobs "listing jobs by status" \
  status:ascending created_at:descending __name__:descending
# owner == X order by created_at desc, __name__ desc
create_index jobs "a caller's own jobs, newest first" \
  owner:ascending created_at:descending __name__:descending
# owner == X and status == Y order by created_at desc, __name__ desc
create_index jobs "a caller's jobs by status" \
  owner:ascending status:ascending created_at:descending __name__:descending
# source == X (edits, legacy calls, generations), alone and with owner and status.
create_index jobs "listing jobs by source" \
  source:ascending created_at:descending __name__:descending
create_index jobs "listing jobs by source and status" \
  source:ascending status:ascending created_at:descending __name__:descending
create_index jobs "a caller's jobs by source" \
  owner:ascending source:ascending created_at:descending __name__:descending
create_index jobs "a caller's jobs by source and status" \
  owner:ascending source:ascending status:ascending created_at:descending __name__:descending
# The reconciler: status == 'running' and lease_until < now order by lease_until.
create_index jobs "the reconciler's expired leases" \
  status:ascending lease_until:ascending
# quota_reservations needs none: its only query is a range on created_at
# ordered by created_at, which the single-field index serves.

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
# Read-only access to objects in each bucket edits may take their sources from.
for source in "${SOURCE_BUCKETS[@]}"; do
  run_retry gcloud storage buckets add-iam-policy-binding "gs://$source" \
    --member="$SA_MEMBER" --role=roles/storage.objectViewer --project="$PROJECT_ID"
done
# Firestore read/write. Firestore has no per-database IAM without conditions.
run_retry gcloud projects add-iam-policy-binding "$PROJECT_ID" \
  --member="$SA_MEMBER" --role=roles/datastore.user --condition=None
# Read this one secret.
run_retry gcloud secrets add-iam-policy-binding "$SECRET_NAME" \
  --member="$SA_MEMBER" --role=roles/secretmanager.secretAccessor --project="$PROJECT_ID"
# Sign V4 URLs through IAM signBlob as itself (it has no key file).
run_retry gcloud iam service-accounts add-iam-policy-binding "$SA_EMAIL" \
  --member="$SA_MEMBER" --role=roles/iam.serviceAccountTokenCreator --project="$PROJECT_ID"

# --- 6. Reconciler schedule ---------------------------------------------------

# Cloud Scheduler calls POST /tasks/reconcile as its own account, with an OIDC
# ID token for the function URL. That account is given nothing here: its one
# role, roles/run.invoker on the function, can only be granted once the
# function exists (printed at the end). Cloud Scheduler's service agent mints
# the token through the Cloud Scheduler Service Agent role it receives when the
# API is enabled, so it needs no grant either. Creating the job needs
# iam.serviceAccounts.actAs on the scheduler account, which its creator (or a
# project owner) has.
if exists gcloud iam service-accounts describe "$SCHEDULER_EMAIL" --project="$PROJECT_ID"; then
  note "Service account $SCHEDULER_EMAIL exists"
else
  note "Creating service account $SCHEDULER_EMAIL"
  run gcloud iam service-accounts create "$SCHEDULER_ACCOUNT" --display-name="imagegen reconcile scheduler" \
    --project="$PROJECT_ID"
fi

# Create and update take the same flags, so a re-run puts back the intended
# schedule, target and identity.
job_flags=(--location="$REGION" --schedule="$RECONCILE_SCHEDULE" --time-zone=Etc/UTC
  --uri="$RECONCILE_URL" --http-method=POST
  --oidc-service-account-email="$SCHEDULER_EMAIL" --oidc-token-audience="$FUNCTION_URL"
  --attempt-deadline=300s --description="imagegen: repair what stopped runs left"
  --project="$PROJECT_ID")
# run_retry: the scheduler account may have been created seconds ago.
if exists gcloud scheduler jobs describe "$RECONCILE_JOB" --location="$REGION" --project="$PROJECT_ID"; then
  note "Scheduler job $RECONCILE_JOB exists: updating it to POST $RECONCILE_URL on '$RECONCILE_SCHEDULE'"
  run_retry gcloud scheduler jobs update http "$RECONCILE_JOB" "${job_flags[@]}"
else
  note "Creating scheduler job $RECONCILE_JOB: POST $RECONCILE_URL on '$RECONCILE_SCHEDULE' (UTC)"
  run_retry gcloud scheduler jobs create http "$RECONCILE_JOB" "${job_flags[@]}"
fi
note "Until the function is deployed and the grant below is made, its runs fail (404 or 403); that is harmless."

# --- 7. Next steps ---------------------------------------------------------------

if [[ "$DRY_RUN" == true ]]; then
  note "Dry run: nothing was changed."
else
  note "Setup done."
fi
note "Next: cp env.yaml.example env.yaml and set GCS_BUCKET: \"$BUCKET\""
if [[ ${#SOURCE_BUCKETS[@]} -gt 0 ]]; then
  note "      and EDIT_SOURCE_BUCKETS: \"$(IFS=,; echo "${SOURCE_BUCKETS[*]}")\""
fi
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
note "After the first deploy, let the scheduler account call the function (once):"
cat <<EOF

gcloud functions add-invoker-policy-binding imageGen --region=$REGION --member=serviceAccount:$SCHEDULER_EMAIL --project=$PROJECT_ID

EOF
if [[ "$FUNCTION_URL" != "$FUNCTION_URL_DEFAULT" ]]; then
  note "FUNCTION_URL was given: use your function's name in place of imageGen. The token's audience is"
  note "$FUNCTION_URL; for a custom domain, add it to the function's Cloud Run service:"
  note "  gcloud run services update SERVICE --region=$REGION --add-custom-audiences=$FUNCTION_URL --project=$PROJECT_ID"
fi
note "That binding is all the scheduler needs: the job sends an OIDC ID token for $SCHEDULER_EMAIL,"
note "which Cloud Scheduler's service agent mints with the role it got when the API was enabled."
note "Only if this project enabled the Cloud Scheduler API before 2019-03-19 must that role be granted by hand:"
note "  gcloud projects add-iam-policy-binding $PROJECT_ID --role=roles/cloudscheduler.serviceAgent \\"
note "    --member=serviceAccount:service-PROJECT_NUMBER@gcp-sa-cloudscheduler.iam.gserviceaccount.com"
note "  (PROJECT_NUMBER: gcloud projects describe $PROJECT_ID --format='value(projectNumber)')"
note "Whoever deploys needs roles/iam.serviceAccountUser on $SA_EMAIL"
note "(for Cloud Build: its service account, plus roles/cloudfunctions.developer);"
note "callers need roles/run.invoker on the function (it does not allow unauthenticated calls)."
note "The bucket enforces public access prevention: use URL_MODE signed or proxy, not public."
