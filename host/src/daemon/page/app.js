// The daemon's page: Torrents, Seeds and Plugins over the HTTP API (docs/api.md), updated live
// from the event stream. Plain DOM, no framework, nothing fetched from elsewhere. Everything
// that came from the network is put in with textContent, never parsed as HTML.

const $ = (sel) => document.querySelector(sel);
const downloads = new Map();   // id -> Download
const seeds = new Map();       // id -> Seed
const rows = new Map();        // id -> <tr> of the downloads table
let token = new URLSearchParams(location.hash.slice(1)).get('token') || '';
let detailId = null;

// ---- the API -----------------------------------------------------------------------------------
async function api(path, { method = 'GET', body, form } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    let payload;
    if (form) payload = form;
    else if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
    const r = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
    if (r.status === 204) return null;
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    return data;
}

function say(text, isError = false) {
    const s = $('#status');
    s.textContent = text;
    s.classList.toggle('error', isError);
}
const attempt = (fn) => async (...args) => {
    try { await fn(...args); } catch (e) { say(String(e.message || e), true); }
};

// ---- formatting ----------------------------------------------------------------------------------
function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0; let v = Number(n) || 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${i ? v.toFixed(1) : v} ${units[i]}`;
}
function eta(s) {
    if (s === null || s === undefined) return '—';
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function percent(d) {
    if (d.state === 'completed') return 100;
    if (!d.bytes_total) return 0;
    return Math.min(100, Math.floor((d.bytes_done * 1000) / d.bytes_total) / 10);
}
function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (k === 'text') e.textContent = v;
        else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
        else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
}
// The protocol family of a plugin, for the sources filter.
function family(plugin) {
    const p = String(plugin).toLowerCase();
    if (p === 'bittorrent' || p === 'rqbit' || p.startsWith('bittorrent')) return 'bittorrent';
    if (p.startsWith('http')) return 'http';
    if (p.startsWith('ftp')) return 'ftp';
    if (p.startsWith('chiral')) return 'chiral';
    return 'other';
}

// ---- the downloads -------------------------------------------------------------------------------
function downloadRow(d) {
    let tr = rows.get(d.id);
    if (!tr) {
        const bar = el('div', { role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', class: 'bar-outer' },
            el('div', { class: 'bar-fill' }));
        const toggle = el('button', { type: 'button', class: 'toggle' });
        toggle.addEventListener('click', attempt(async () => {
            const cur = downloads.get(d.id);
            const action = cur && (cur.state === 'paused' || cur.state === 'failed') ? 'resume' : 'pause';
            update(await api(`/api/v1/downloads/${encodeURIComponent(d.id)}/${action}`, { method: 'POST' }));
        }));
        const details = el('button', { type: 'button', class: 'details', text: 'Details' });
        details.addEventListener('click', () => openDetail(d.id));
        const remove = el('button', { type: 'button', class: 'remove', text: 'Remove' });
        remove.addEventListener('click', attempt(async () => {
            const cur = downloads.get(d.id);
            if (!confirm(`Remove ${cur.name} from the list?`)) return;
            const files = confirm('Delete its files too (with what is partly downloaded)?');
            await api(`/api/v1/downloads/${encodeURIComponent(d.id)}?delete_files=${files}`, { method: 'DELETE' });
            forget(d.id);
        }));
        tr = el('tr', { 'data-id': d.id },
            el('th', { scope: 'row', class: 'name' }),
            el('td', { class: 'progress' }, bar, el('span', { class: 'pct' })),
            el('td', { class: 'speed' }), el('td', { class: 'eta' }), el('td', { class: 'peers' }),
            el('td', { class: 'state' }),
            el('td', { class: 'actions' }, toggle, details, remove));
        $('#downloads tbody').append(tr);
        rows.set(d.id, tr);
    }
    const pct = percent(d);
    tr.querySelector('.name').textContent = d.name;
    tr.querySelector('.name').title = d.error ? `${d.name}: ${d.error}` : d.name;
    const bar = tr.querySelector('[role=progressbar]');
    bar.setAttribute('aria-valuenow', String(pct));
    bar.setAttribute('aria-valuetext', `${pct} %`);
    bar.setAttribute('aria-label', `Progress of ${d.name}`);
    tr.querySelector('.bar-fill').style.width = `${pct}%`;
    tr.querySelector('.pct').textContent = `${pct} % of ${bytes(d.bytes_total)}`;
    tr.querySelector('.speed').textContent = d.state === 'running' ? `${bytes(d.speed)}/s` : '—';
    tr.querySelector('.eta').textContent = d.state === 'running' ? eta(d.eta_seconds) : '—';
    tr.querySelector('.peers').textContent = String(d.peers);
    tr.querySelector('.state').textContent = d.error ? `${d.state}: ${d.error}` : d.state;
    tr.dataset.state = d.state;
    const toggle = tr.querySelector('.toggle');
    const resumable = d.state === 'paused' || d.state === 'failed';
    toggle.textContent = resumable ? 'Resume' : 'Pause';
    toggle.setAttribute('aria-label', `${resumable ? 'Resume' : 'Pause'} ${d.name}`);
    toggle.hidden = d.state === 'completed';
    tr.querySelector('.details').setAttribute('aria-label', `Details of ${d.name}`);
    tr.querySelector('.remove').setAttribute('aria-label', `Remove ${d.name}`);
}
function update(d) {
    if (!d || !d.id) return;
    downloads.set(d.id, d);
    downloadRow(d);
    $('#no-downloads').hidden = downloads.size > 0;
    if (detailId === d.id) renderDetail();
}
function forget(id) {
    downloads.delete(id);
    rows.get(id)?.remove();
    rows.delete(id);
    $('#no-downloads').hidden = downloads.size > 0;
    if (detailId === id) $('#detail').close();
}

// ---- the detail: sources and peers, filtered by protocol --------------------------------------------
function openDetail(id) {
    detailId = id;
    // The options are filled in once, as the dialog opens, so live updates do not undo typing.
    const d = downloads.get(id);
    if (d) {
        $('#opt-rate').value = d.max_download_rate ? String(d.max_download_rate) : '';
        $('#opt-files').value = d.file_selection || '';
        $('#opt-sequential').checked = !!d.sequential;
    }
    renderDetail();
    const dlg = $('#detail');
    if (!dlg.open) dlg.showModal();
}
function renderDetail() {
    const d = downloads.get(detailId);
    if (!d) return;
    $('#detail-title').textContent = `Details of ${d.name}`;
    const facts = $('#detail-facts');
    facts.replaceChildren();
    const fact = (k, v) => { facts.append(el('dt', { text: k }), el('dd', { text: v })); };
    fact('State', d.error ? `${d.state}: ${d.error}` : d.state);
    fact('Done', `${bytes(d.bytes_done)} of ${bytes(d.bytes_total)}`);
    fact('Folder', d.out_dir);
    fact('Limit', d.max_download_rate ? `${bytes(d.max_download_rate)}/s` : 'none of its own');
    if (d.file_selection) fact('Chosen files', d.file_selection);
    if (d.files.length) fact('Files', d.files.join('\n'));
    const shown = new Set([...document.querySelectorAll('#detail-filter input:checked')].map((c) => c.value));
    const body = $('#detail-sources tbody');
    body.replaceChildren();
    for (const s of d.sources) {
        const peers = (s.peers || []).map((p) => [p.address, p.chiral_peer_id && `Chiral ${p.chiral_peer_id}`,
            p.reputation !== null && p.reputation !== undefined && `reputation ${p.reputation}`, bytes(p.bytes)]
            .filter(Boolean).join(', '));
        const tr = el('tr', {},
            el('td', { text: s.plugin }),
            el('td', { class: 'ident', text: s.dropped ? `${s.identifier} (dropped: ${s.dropped})` : s.identifier }),
            el('td', { text: bytes(s.bytes) }),
            el('td', { text: `${bytes(s.speed)}/s` }),
            el('td', { text: peers.length ? peers.join('; ') : '—' }));
        const fam = family(s.plugin);
        tr.hidden = fam !== 'other' && !shown.has(fam);
        body.append(tr);
    }
}

// ---- the seeds ---------------------------------------------------------------------------------------
function seedRow(s) {
    const tr = el('tr', { 'data-id': s.id });
    const ids = el('td', { class: 'ident' });
    for (const i of s.identifiers) {
        const copy = el('button', { type: 'button', text: 'Copy', 'aria-label': `Copy ${i}` });
        copy.addEventListener('click', attempt(async () => {
            await navigator.clipboard.writeText(i);
            say(`Copied ${i}`);
        }));
        ids.append(el('div', {}, el('code', { text: i }), ' ', copy));
    }
    const actions = el('td', { class: 'actions' });
    if (s.state === 'running') {
        actions.append(el('button', { type: 'button', text: 'Stop', 'aria-label': `Stop seeding ${s.path}`,
            on: { click: attempt(async () => seedUpdate(await api(`/api/v1/seeds/${encodeURIComponent(s.id)}/stop`, { method: 'POST' }))) } }));
    } else {
        actions.append(el('button', { type: 'button', text: 'Start', 'aria-label': `Start seeding ${s.path}`,
            on: { click: attempt(async () => seedUpdate(await api(`/api/v1/seeds/${encodeURIComponent(s.id)}/start`, { method: 'POST' }))) } }));
    }
    actions.append(el('button', { type: 'button', text: 'Remove', 'aria-label': `Remove seed ${s.path}`,
        on: { click: attempt(async () => {
            if (!confirm(`Forget the seed of ${s.path}? (the file stays)`)) return;
            await api(`/api/v1/seeds/${encodeURIComponent(s.id)}`, { method: 'DELETE' });
            seedForget(s.id);
        }) } }));
    tr.append(el('th', { scope: 'row', text: s.path }), el('td', { text: s.plugin }), ids,
        el('td', { text: bytes(s.bytes_served) }),
        el('td', { class: 'state', text: s.error ? `${s.state}: ${s.error}` : s.state }), actions);
    return tr;
}
function seedUpdate(s) {
    if (!s || !s.id) return;
    seeds.set(s.id, s);
    const old = document.querySelector(`#seeds tbody tr[data-id="${CSS.escape(s.id)}"]`);
    const tr = seedRow(s);
    if (old) old.replaceWith(tr); else $('#seeds tbody').append(tr);
    $('#no-seeds').hidden = seeds.size > 0;
}
function seedForget(id) {
    seeds.delete(id);
    document.querySelector(`#seeds tbody tr[data-id="${CSS.escape(id)}"]`)?.remove();
    $('#no-seeds').hidden = seeds.size > 0;
}

// ---- plugins -----------------------------------------------------------------------------------------
async function loadPlugins() {
    const r = await api('/api/v1/plugins');
    const body = $('#plugins tbody');
    body.replaceChildren();
    const via = $('#seed-via');
    for (const p of r.plugins) {
        const claims = [...p.schemes.map((s) => `${s}:`), ...p.suffixes.map((s) => `*${s}`)].join(' ');
        body.append(el('tr', {}, el('th', { scope: 'row', text: p.name ?? p.file }), el('td', { text: p.version ?? '' }),
            el('td', { text: claims }), el('td', { text: p.capabilities.join(' ') }),
            el('td', { text: p.reason ? `${p.status}: ${p.reason}` : p.status })));
        if (p.status === 'loaded' && p.capabilities.some((c) => /seed/i.test(c)) && p.name) {
            via.append(el('option', { value: p.name, text: p.name }));
        }
    }
}

// ---- views -------------------------------------------------------------------------------------------
function show(view) {
    for (const t of document.querySelectorAll('[role=tab]')) {
        const on = t.id === `tab-${view}`;
        t.setAttribute('aria-selected', String(on));
        t.tabIndex = on ? 0 : -1;
        $(`#${t.getAttribute('aria-controls')}`).hidden = !on;
    }
    document.title = `Chiral — ${view[0].toUpperCase()}${view.slice(1)}`;
}

// ---- live updates ------------------------------------------------------------------------------------
async function loadAll() {
    const [d, s] = await Promise.all([api('/api/v1/downloads'), api('/api/v1/seeds')]);
    for (const id of [...downloads.keys()]) if (!d.downloads.some((x) => x.id === id)) forget(id);
    for (const id of [...seeds.keys()]) if (!s.seeds.some((x) => x.id === id)) seedForget(id);
    d.downloads.forEach(update);
    s.seeds.forEach(seedUpdate);
}
// One line: what this node owes and paid the peers it downloaded from (docs/payments.md).
async function loadPayments() {
    const r = await api('/api/v1/payments');
    let owed = 0n, paid = 0n;
    for (const w of r.payments) { owed += BigInt(w.owed_wei); paid += BigInt(w.paid_wei); }
    $('#payments').textContent = r.payments.length
        ? `Payments: ${paid} wei paid, ${owed} wei owed, to ${r.payments.length} wallet(s)`
        : '';
}
function listen() {
    const es = new EventSource('/api/v1/events');
    const parse = (fn) => (ev) => { try { fn(JSON.parse(ev.data)); } catch (e) { say(String(e), true); } };
    es.addEventListener('download', parse(update));
    es.addEventListener('seed', parse(seedUpdate));
    es.addEventListener('removed', parse((r) => (r.kind === 'seed' ? seedForget(r.id) : forget(r.id))));
    es.addEventListener('payment', () => { loadPayments().catch(() => {}); });
    es.addEventListener('open', () => { say(''); loadAll().catch(() => {}); loadPayments().catch(() => {}); });
    es.addEventListener('error', () => say('Connection to the daemon lost; retrying…', true));
}

async function main() {
    for (const t of document.querySelectorAll('[role=tab]')) t.addEventListener('click', () => show(t.id.slice(4)));
    $('#detail-filter').addEventListener('change', renderDetail);
    $('#detail').addEventListener('close', () => { detailId = null; });
    $('#detail-options').addEventListener('submit', attempt(async (ev) => {
        ev.preventDefault();
        if (!detailId) return;
        const body = {
            max_download_rate: $('#opt-rate').value.trim() || null,
            file_selection: $('#opt-files').value.trim() || null,
            sequential: $('#opt-sequential').checked,
        };
        update(await api(`/api/v1/downloads/${encodeURIComponent(detailId)}`, { method: 'PATCH', body }));
        say('Options applied');
    }));
    $('#add-form').addEventListener('submit', attempt(async (ev) => {
        ev.preventDefault();
        const input = $('#add-input');
        const body = { identifiers: input.value.split(/\s+/).filter(Boolean) };
        const dir = $('#add-dir').value.trim();
        if (dir) body.out_dir = dir;
        const d = await api('/api/v1/downloads', { method: 'POST', body });
        input.value = '';
        update(await api(`/api/v1/downloads/${encodeURIComponent(d.id)}`));
        say(`Added ${d.name}`);
    }));
    $('#upload-form').addEventListener('submit', attempt(async (ev) => {
        ev.preventDefault();
        const form = new FormData();
        form.append('torrent', $('#upload-file').files[0]);
        const dir = $('#add-dir').value.trim();
        if (dir) form.append('out_dir', dir);
        const d = await api('/api/v1/downloads', { method: 'POST', form });
        update(await api(`/api/v1/downloads/${encodeURIComponent(d.id)}`));
        say(`Added ${d.name}`);
    }));
    $('#seed-form').addEventListener('submit', attempt(async (ev) => {
        ev.preventDefault();
        const via = $('#seed-via').value;
        const r = await api('/api/v1/seeds', { method: 'POST', body: { path: $('#seed-path').value.trim(), via: via ? [via] : [] } });
        (r.seeds || [r]).forEach(seedUpdate);
        $('#seed-path').value = '';
    }));
    if (token) {
        // The token becomes an HttpOnly cookie (the event stream needs it), then leaves the URL.
        await api('/api/v1/session', { method: 'POST' });
        history.replaceState(null, '', location.pathname);
    }
    show('torrents');
    await loadAll();
    listen();
    await loadPlugins().catch((e) => say(String(e.message || e), true));
}

main().catch((e) => say(`${e.message || e} — open the URL the daemon printed (with its #token=…)`, true));
