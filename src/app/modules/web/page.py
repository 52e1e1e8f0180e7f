"""The one HTML shell of the dashboard; the JavaScript modules fill it from the API."""

from __future__ import annotations

# The entry URLs carry this (assets are revalidated by ETag anyway); bump it on releases.
ASSET_VERSION = "3"

SHELL = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>Pulse</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/pulse.css?v={ASSET_VERSION}">
<script type="module" src="/static/main.js?v={ASSET_VERSION}"></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="topbar">
  <a class="brand" href="/" data-nav>Pulse</a>
  <nav class="mainnav" aria-label="Main">
    <a href="/" data-nav data-view="overview">Overview</a>
    <a href="/imports" data-nav data-view="imports" id="nav-imports" hidden>Imports</a>
  </nav>
  <div class="tenant-switch" id="tenant-switch"></div>
  <div class="account" id="account" hidden>
    <span class="who" id="who"></span>
    <button type="button" id="sign-out" class="link-button">Sign out</button>
  </div>
</header>
<main id="main" tabindex="-1">
  <p class="status" id="boot" role="status">Loading Pulse&hellip;</p>
  <noscript><p class="error">Pulse's dashboard needs JavaScript.</p></noscript>
</main>
<div id="announcer" class="visually-hidden" role="status" aria-live="polite"></div>
</body>
</html>
"""
