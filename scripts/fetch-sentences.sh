#!/usr/bin/env bash
# Fetches the human-rated sentence sets of the VADER study (Hutto & Gilbert, "VADER: A
# Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014) from
# PyPI: the vaderSentiment 3.3.2 sdist (MIT licence) carries the study's archive,
# additional_resources/hutto_ICWSM_2014.tar.gz. Puts the product-review and movie-review ground
# truth (`id<TAB>mean rating<TAB>text`, ratings -4..+4 from 20 raters), the study's README and
# the licence into .cache/data/vader-icwsm2014, once, checking each file's SHA-256. Prints the
# folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/data/vader-icwsm2014
sums="11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2  amazonReviewSnippets_GroundTruth.txt
c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350  movieReviewSnippets_GroundTruth.txt"
if (cd "$dest" 2>/dev/null && sha256sum --quiet --check --status <<<"$sums"); then
    echo "$PWD/$dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-sentences: downloading the vaderSentiment 3.3.2 sdist from PyPI" >&2
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" vaderSentiment==3.3.2 >&2
tar -xzf "$tmp"/vaderSentiment-3.3.2.tar.gz -C "$tmp" \
    vaderSentiment-3.3.2/LICENSE.txt vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
tar -xzf "$tmp"/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C "$tmp" \
    hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt \
    hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt \
    hutto_ICWSM_2014/_README_.txt
(cd "$tmp/hutto_ICWSM_2014" && sha256sum --quiet --check <<<"$sums") >&2 || {
    echo "fetch-sentences: the files in the sdist are not the expected ones" >&2
    exit 1
}
mkdir -p "$dest"
cp "$tmp"/hutto_ICWSM_2014/*_GroundTruth.txt "$dest"/
cp "$tmp"/hutto_ICWSM_2014/_README_.txt "$dest"/README.txt
cp "$tmp"/vaderSentiment-3.3.2/LICENSE.txt "$dest"/LICENSE.txt
echo "$PWD/$dest"
