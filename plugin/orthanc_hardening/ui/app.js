// Audit review page of orthanc-hardening. Talks only to this Orthanc (same origin):
// /hardening/audit (the trail), /hardening/audit/verify (chain), the seal and manifest
// routes, /hardening/posture (administrators) and Orthanc's own REST API to resolve ids.
'use strict';

(function () {
  var API = '../audit';
  var ORTHANC_ID = /^[0-9a-f]{8}(-[0-9a-f]{8}){4}$/i;
  var FIELDS = ['series', 'study', 'patient', 'user', 'action', 'outcome', 'since', 'until'];
  var PAGE = 200;
  var nextAfter = null;

  function $(id) { return document.getElementById(id); }

  function getJson(url) {
    return fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (response) {
        return response.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          return { status: response.status, body: body };
        });
      });
  }

  function text(element, value, cls) {
    element.textContent = value;
    element.className = cls || '';
  }

  function cell(row, value, cls) {
    var td = document.createElement('td');
    td.textContent = value === undefined || value === null ? '' : String(value);
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }

  function isoFromLocal(value) {
    // The inputs are in UTC (the trail is UTC): "2026-01-02T03:04:05" -> "...Z".
    if (!value) { return ''; }
    return value.length === 16 ? value + ':00Z' : value + 'Z';
  }

  function filters() {
    var params = new URLSearchParams();
    FIELDS.forEach(function (name) {
      var value = $('f-' + name).value.trim();
      if (name === 'since' || name === 'until') { value = isoFromLocal(value); }
      if (value) { params.set(name, value); }
    });
    return params;
  }

  function updateCsvLink(params) {
    var csv = new URLSearchParams(params);
    csv.set('format', 'csv');
    csv.set('limit', '10000');
    $('csv').href = API + '?' + csv.toString();
  }

  function who(event) {
    var parts = [];
    if (event.user) { parts.push(event.user); }
    if (event.calling_aet) { parts.push('AET ' + event.calling_aet); }
    return parts.join(' / ') || '(unknown)';
  }

  function path(event) {
    var parts = [event.transport];
    if (event.route) { parts.push(event.route); }
    if (event.called_aet && event.transport === 'dimse') { parts.push('→ ' + event.called_aet); }
    return parts.join(' ');
  }

  var OUTCOMES = { 0: 'success', 4: 'minor failure', 8: 'serious failure', 12: 'major failure' };

  function render(events, append) {
    var body = $('timeline').querySelector('tbody');
    if (!append) { body.textContent = ''; }
    events.forEach(function (event) {
      var row = document.createElement('tr');
      row.className = 'event' + (event.outcome !== 0 ? ' failure' : '');
      row.dataset.seq = event.seq;
      cell(row, event.seq);
      cell(row, event.time.replace('T', ' '), 'mono time');
      cell(row, event.event + ' ' + (event.event_name || ''));
      cell(row, event.action);
      var outcome = cell(row, '');
      var pill = document.createElement('span');
      pill.className = 'pill o' + event.outcome;
      pill.textContent = OUTCOMES[event.outcome] || String(event.outcome);
      outcome.appendChild(pill);
      cell(row, who(event), 'who');
      cell(row, event.source_ip || '', 'mono');
      cell(row, path(event));
      cell(row, event.series_uid || event.study_uid || '', 'mono');
      cell(row, event.instance_count || '');
      cell(row, event.detail || '', 'detail');
      body.appendChild(row);
    });
  }

  function load(append) {
    var params = filters();
    updateCsvLink(params);
    params.set('limit', String(PAGE));
    params.set('format', 'json');
    if (append && nextAfter !== null) { params.set('after', String(nextAfter)); }
    $('error').hidden = true;
    return getJson(API + '?' + params.toString()).then(function (answer) {
      if (answer.status !== 200) {
        var detail = answer.body ? (answer.body.error + ': ' + answer.body.detail) : 'HTTP ' + answer.status;
        text($('error'), detail, 'error');
        $('error').hidden = false;
        return;
      }
      render(answer.body.events, append);
      nextAfter = answer.body.next_after;
      $('more').hidden = nextAfter === null || nextAfter === undefined;
      var shown = $('timeline').querySelectorAll('tbody tr').length;
      text($('summary'), shown + ' event' + (shown === 1 ? '' : 's') + ' shown, newest first', 'muted');
    });
  }

  function showChain() {
    getJson(API + '/verify').then(function (answer) {
      var body = answer.body || {};
      if (answer.status === 200 && body.ok) {
        text($('chain-status'), 'Verified: ' + body.rows + ' events, chain intact. Last signed checkpoint at #' +
             body.last_checkpoint_seq + ' (' + body.unsigned_tail + ' newer events not yet signed; keys ' +
             (body.key_ids || []).join(', ') + ').', 'ok');
      } else if (answer.status === 409) {
        text($('chain-status'), 'BROKEN at event #' + body.first_broken_seq + ': ' +
             (body.problems || []).slice(0, 3).join('; '), 'bad');
      } else {
        text($('chain-status'), 'Verification not available (HTTP ' + answer.status + ').', 'warn');
      }
    });
  }

  function showPosture() {
    getJson('../posture').then(function (answer) {
      if (answer.status !== 200 || !answer.body) { return; }
      var body = answer.body;
      $('posture-card').hidden = false;
      var failed = (body.checks || []).filter(function (c) { return c.status === 'fail'; });
      var warned = (body.checks || []).filter(function (c) { return c.status === 'warn'; });
      text($('posture-status'), 'Mode ' + body.mode + ': ' + failed.length + ' failed, ' + warned.length +
           ' warnings of ' + (body.checks || []).length + ' checks' +
           (body.lockdown && body.lockdown.length ? ' — LOCKED DOWN' : ''), failed.length ? 'bad' : 'ok');
      var list = $('posture-failed');
      list.textContent = '';
      failed.concat(warned).slice(0, 8).forEach(function (check) {
        var li = document.createElement('li');
        li.textContent = check.status.toUpperCase() + ' ' + check.title;
        list.appendChild(li);
      });
    });
  }

  function showIntegrity(studyId) {
    $('integrity-card').hidden = false;
    text($('seal-status'), 'checking seals…', 'muted');
    getJson('../../studies/' + studyId + '/instances').then(function (answer) {
      if (answer.status !== 200 || !Array.isArray(answer.body)) {
        text($('seal-status'), 'Seals: not available (HTTP ' + answer.status + ').', 'warn');
        return;
      }
      var instances = answer.body.slice(0, 100);
      var checks = instances.map(function (instance) {
        return getJson('../instances/' + instance.ID + '/seal');
      });
      Promise.all(checks).then(function (answers) {
        if (answers.length && answers.every(function (a) { return a.status === 404; })) {
          text($('seal-status'), 'Seals: not available on this server.', 'warn');
          return;
        }
        var verified = answers.filter(function (a) { return a.status === 200 && a.body && a.body.verified; }).length;
        var failed = answers.length - verified;
        text($('seal-status'), 'Seals: ' + verified + ' of ' + answers.length + ' instances verified' +
             (answer.body.length > instances.length ? ' (first ' + instances.length + ' checked)' : '') +
             (failed ? ', ' + failed + ' NOT verified' : ''), failed ? 'bad' : 'ok');
      });
    });
    getJson('../studies/' + studyId + '/manifest').then(function (answer) {
      var body = answer.body || {};
      if (answer.status === 200 && body.verification) {
        var v = body.verification;
        text($('manifest-status'), 'Study manifest: ' + (v.ok ? 'verified' : 'PROBLEMS: ' + v.problems.length) +
             ' (' + v.checked + ' of ' + v.instance_count + ' instances, root ' + String(v.root).slice(0, 16) + '…)',
             v.ok ? 'ok' : 'bad');
      } else if (answer.status === 409) {
        text($('manifest-status'), 'Study manifest: does NOT verify — ' + (body.detail || ''), 'bad');
      } else {
        text($('manifest-status'), 'Study manifest: not available.', 'muted');
      }
    });
  }

  // The Explorer buttons pass Orthanc ids; the trail is keyed by DICOM UIDs.
  function resolve(params) {
    var tasks = [];
    var studyId = null;
    ['series', 'study', 'patient'].forEach(function (level) {
      var value = params.get(level);
      if (!value || !ORTHANC_ID.test(value)) { return; }
      var resource = level === 'series' ? 'series' : level === 'study' ? 'studies' : 'patients';
      tasks.push(getJson('../../' + resource + '/' + value).then(function (answer) {
        if (answer.status !== 200 || !answer.body) { return; }
        var tags = answer.body.MainDicomTags || {};
        var uid = level === 'series' ? tags.SeriesInstanceUID : level === 'study' ? tags.StudyInstanceUID : tags.PatientID;
        if (uid) { params.set(level, uid); }
        if (level === 'study') { studyId = value; }
        if (level === 'series') { studyId = answer.body.ParentStudy; }
      }));
    });
    return Promise.all(tasks).then(function () { return studyId; });
  }

  function start() {
    var params = new URLSearchParams(window.location.search);
    resolve(params).then(function (studyId) {
      FIELDS.forEach(function (name) {
        var value = params.get(name);
        if (value && name !== 'since' && name !== 'until') { $('f-' + name).value = value; }
      });
      if (studyId) { showIntegrity(studyId); }
      load(false);
    });
    showChain();
    showPosture();
    $('filters').addEventListener('submit', function (e) { e.preventDefault(); nextAfter = null; load(false); });
    $('reset').addEventListener('click', function () {
      FIELDS.forEach(function (name) { $('f-' + name).value = ''; });
      nextAfter = null;
      load(false);
    });
    $('more').addEventListener('click', function () { load(true); });
  }

  document.addEventListener('DOMContentLoaded', start);
})();
