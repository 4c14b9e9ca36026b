#!/usr/bin/env bash
# Once per Firestore database: the index settings and the TTL policy ingestiond's layouts need
# (deploy/firestore.ttl.md says why). Every step can be run again; --dry-run prints the plan.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG --project ID [options]

Sets up one Firestore database (Native mode) for ingestiond, for the layout of its store URL
(firestore://PROJECT?layout=packed|entities; packed is the default for a new database):

  both layouts  TTL policy on ingest_batches.expires_at (the exactly-once markers expire after
                30 days) and no index on that field
  packed        no single-field indexes on the counter maps: e and h of collection groups
                shards and days, sv of collection group sums (each shard or day document holds
                up to 4,000 entities: indexed, every entity would cost index entries on each
                write, against Firestore's 40,000 per document); an ascending collection-group
                index on sums.changed_at for the readers' "changed since" query, and ascending
                and descending ones on days.day for windows across publications (gcloud cannot
                create collection-group single-field indexes, so these go through the Firestore
                Admin REST API with curl and your gcloud login's access token)
  entities      the composite index ent (count descending, word ascending) the entity listing needs

  --project ID           Google Cloud project (or \$INGEST_GCP_PROJECT)
  --database ID          Firestore database (default: (default))
  --layout NAME          packed (default), entities, or all (a project with databases of both)
  --no-ttl               leave the TTL policy and the markers' index alone
  --async                do not wait for each index change to finish (Firestore builds them)
  --dry-run              print every command instead of running it
  -h, --help             this text
EOF
}

DATABASE="(default)"
LAYOUT="packed"
TTL=1
ASYNC=()

split_equals "$@"
set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --project) need_arg "$@"; TARGET_PROJECT="$2"; shift ;;
        --database) need_arg "$@"; DATABASE="$2"; shift ;;
        --layout) need_arg "$@"; LAYOUT="$2"; shift ;;
        --no-ttl) TTL=0 ;;
        --async) ASYNC=(--async) ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

[[ -n "$TARGET_PROJECT" ]] || usage_error "--project is required"
valid_project "$TARGET_PROJECT" || usage_error "--project '$TARGET_PROJECT' is not a valid project id"
[[ "$DATABASE" == "(default)" || "$DATABASE" =~ ^[a-z][-a-z0-9]{2,62}$ ]] ||
    usage_error "--database '$DATABASE' is not a valid database id"
case "$LAYOUT" in
    packed | entities | all) ;;
    *) usage_error "--layout must be packed, entities or all (not '$LAYOUT')" ;;
esac
need_cmd gcloud "install the Google Cloud CLI"

SCOPE=("--project=$TARGET_PROJECT" "--database=$DATABASE")

# A single-field index exemption: FIELD of collection group GROUP is not indexed at all.
no_index() {
    run gcloud firestore indexes fields update "$1" "--collection-group=$2" "${SCOPE[@]}" \
        --disable-indexes "${ASYNC[@]+"${ASYNC[@]}"}" --quiet
}

# GROUP.FIELD: ascending and descending in collection scope (what automatic indexing gives every
# field, kept) plus ORDERS (ASCENDING, DESCENDING) in collection-group scope (not maintained by
# default), set with the Admin API's fields.patch. The token travels in a 0600 header file, never
# in argv. Used for sums.changed_at (ascending) and days.day (both).
group_index() {
    local group="$1" field="$2" url body header order
    shift 2
    url="https://firestore.googleapis.com/v1/projects/$TARGET_PROJECT/databases/$DATABASE"
    url+="/collectionGroups/$group/fields/$field?updateMask=indexConfig"
    body='{"indexConfig":{"indexes":['
    body+='{"queryScope":"COLLECTION","fields":[{"fieldPath":"'$field'","order":"ASCENDING"}]},'
    body+='{"queryScope":"COLLECTION","fields":[{"fieldPath":"'$field'","order":"DESCENDING"}]}'
    for order in "$@"; do
        body+=',{"queryScope":"COLLECTION_GROUP","fields":[{"fieldPath":"'$field'","order":"'$order'"}]}'
    done
    body+=']}}'
    if [[ "$DRY_RUN" == 1 ]]; then
        run gcloud auth print-access-token
        run curl --silent --show-error --fail -X PATCH -H @HEADER_FILE -H "X-Goog-User-Project: $TARGET_PROJECT" \
            -H "Content-Type: application/json" --data "$body" "$url"
        return 0
    fi
    need_cmd curl "needed for the collection-group index on $group.$field"
    header="$(mktemp)"
    chmod 600 "$header"
    # shellcheck disable=SC2064  # expand now: the trap removes this very file
    trap "rm -f '$header'" EXIT
    log "gcloud auth print-access-token (into a 0600 header file)"
    local token
    token="$(gcloud auth print-access-token)"
    [[ -n "$token" ]] || die "gcloud auth print-access-token gave no token (gcloud auth login?)"
    printf 'Authorization: Bearer %s\n' "$token" >"$header"
    run_quiet curl --silent --show-error --fail -X PATCH -H "@$header" -H "X-Goog-User-Project: $TARGET_PROJECT" \
        -H "Content-Type: application/json" --data "$body" "$url"
    rm -f "$header"
}

failed=()
if ((TTL)); then
    run gcloud firestore fields ttls update expires_at --collection-group=ingest_batches "${SCOPE[@]}" \
        --enable-ttl "${ASYNC[@]+"${ASYNC[@]}"}" --quiet
    no_index expires_at ingest_batches  # a timestamp written in order would hot-spot its index
fi
if [[ "$LAYOUT" == packed || "$LAYOUT" == all ]]; then
    no_index e shards
    no_index h shards
    no_index sv sums
    no_index e days
    no_index h days
    group_index sums changed_at ASCENDING
    group_index days day ASCENDING DESCENDING
fi
if [[ "$LAYOUT" == entities || "$LAYOUT" == all ]]; then
    # creating an index that exists fails (ALREADY_EXISTS): say so and go on with the rest
    if ! run gcloud firestore indexes composite create --collection-group=ent --query-scope=collection \
        "${SCOPE[@]}" --field-config=field-path=count,order=descending \
        --field-config=field-path=word,order=ascending "${ASYNC[@]+"${ASYNC[@]}"}" --quiet; then
        log "the composite index on ent (count desc, word asc) was not created: if it exists already" \
            "(gcloud firestore indexes composite list $(quote_cmd "${SCOPE[@]}")), nothing is missing"
        failed+=("composite index ent")
    fi
fi
if ((${#failed[@]})); then
    log "not done: ${failed[*]}"
    exit 1
fi
what="the $LAYOUT layout"
[[ "$LAYOUT" == all ]] && what="both layouts"
finish "Firestore database $DATABASE of $TARGET_PROJECT is set up for $what"
