/*
 * The infd canvas: an OpenSeadragon deep-zoom viewer of tiles rendered on demand, and boxes
 * drawn on it.
 *
 * Mounted by the gr.HTML component of app/ui.py (js_on_load):
 *   InfdViewer.mount(element, props, trigger, watch, eventNames)
 * (eventNames is unused here: it only makes Gradio see the custom event names).
 * Python -> browser: props.value = {session, image, boxes, selected, rev, progress} (viewer_value
 * in handlers.py); watch('value') redraws. Browser -> Python: trigger('box_edit', {op, rev, box|id}),
 * trigger('box_select', {id}), trigger('history', {action}), and trigger('view_shown', {gen}) once a
 * finished (not preview) image is on screen with every tile of the view loaded. The server holds the state; this
 * file keeps a local copy of the boxes so that dragging is instant.
 *
 * Boxes are stored as fractions of the image (x0, y0, x1, y1 in [0, 1], y down). OpenSeadragon
 * viewport coordinates are x in [0, 1] and y in [0, height / width], hence `aspect` below.
 */
(function () {
  'use strict';

  const HANDLE_PX = 9;      // grab distance of a resize handle, in screen pixels
  const MIN_BOX_PX = 6;     // a drag shorter than this is a click, not a box
  const HANDLES = ['nw', 'n', 'ne', 'e', 'se', 's', 'sw', 'w'];
  const CURSORS = { nw: 'nwse-resize', se: 'nwse-resize', ne: 'nesw-resize', sw: 'nesw-resize',
                    n: 'ns-resize', s: 'ns-resize', e: 'ew-resize', w: 'ew-resize' };

  // Requests in flight (OpenSeadragon's imageLoaderLimit). The server renders the newest request
  // first, so a pan or zoom jumps the queue; but a browser sends at most 6 requests at a time to
  // one server and queues the rest in order, so beyond 6 the browser's order wins (zooming in,
  // the coarser tiles asked for on the way were rendered before the ones the view ends on: 55
  // tiles instead of 22). A new version loading hidden asks only for the tiles its view needs, so
  // it may ask for all of them at once: when they are rendered already (a canvas switch, an undo)
  // they arrive in 0.8 s instead of 3.1 s (64 cached tiles; each batch of requests otherwise waits
  // for a frame, ~50 ms without a GPU).
  const FEW_LOADS = 6, ALL_LOADS = 64;

  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

  // Keys are the canvas's wherever the focus is, except in a field that takes text.
  const NOT_TEXT = new Set(['button', 'checkbox', 'radio', 'range', 'color', 'file', 'submit', 'reset']);
  function isTyping(target) {
    const tag = target && target.tagName;
    if (tag === 'INPUT') return !NOT_TEXT.has((target.type || '').toLowerCase());
    return tag === 'TEXTAREA' || tag === 'SELECT' || !!(target && target.isContentEditable);
  }

  function mount(element, props, trigger, watch) {
    const root = element.querySelector('.infd-viewer');
    const viewer = OpenSeadragon({
      element: root.querySelector('.infd-osd'),
      prefixUrl: 'infd/osd/images/',
      showNavigator: true,
      navigatorPosition: 'BOTTOM_RIGHT',
      showRotationControl: false,
      showFlipControl: false,
      preserveImageSizeOnResize: true,
      visibilityRatio: 0.2,
      maxZoomPixelRatio: 4,
      // Tile requests in flight: see FEW_LOADS. A view's tiles are queued at once, not a few per frame.
      imageLoaderLimit: FEW_LOADS,
      maxTilesPerFrame: 64,
      timeout: 120000,          // tiles may wait behind a busy CPU
      blendTime: 0.15,
      // zoom and pan animations: half OpenSeadragon's default 1.2 s. The tiles of the destination
      // load from the start of an animation; 1:1 on a 4096² canvas (key 1) was sharp after 2.1 s
      // with 1.2 s, 1.4 s with 0.6 s (medians of 3, 2-core CPU).
      animationTime: 0.6,
      // 2D canvas: GPU-composited where there is a GPU, and ~15 ms a frame where there is none;
      // the default WebGL drawer under software GL (no GPU, e.g. a VM) took ~200 ms a frame and
      // starts at most one tile download per frame.
      drawer: 'canvas',
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });

    const st = {
      value: null,
      shownKey: null,     // "session/gen" of the image on screen
      aspect: null,       // width / height of the newest image added (a new shape is fitted to the window)
      pendingKey: null,   // the one loading behind it at opacity 0
      pending: null,
      boxes: [],
      selected: null,
      localRev: 0,        // edits sent; server boxes older than this are stale (see update)
      drawMode: false,
      drag: null,         // {mode: 'draw'|'move'|'resize', box, orig, start, handle}
      overlays: new Map(),
    };

    // --- coordinates ------------------------------------------------------------------------
    function aspect() {
      const img = st.value && st.value.image;
      return img ? img.height / img.width : 1;
    }
    function toFrac(pos) {   // viewer-element pixels -> image fractions
      const p = viewer.viewport.viewerElementToViewportCoordinates(pos);
      return { x: p.x, y: p.y / aspect() };
    }
    function boxRect(b) {    // image fractions -> viewport rectangle
      const a = aspect();
      return new OpenSeadragon.Rect(b.x0, b.y0 * a, b.x1 - b.x0, (b.y1 - b.y0) * a);
    }
    function screenRect(b) {
      return viewer.viewport.viewportToViewerElementRectangle(boxRect(b));
    }

    // --- images: a new version fades in only once its visible tiles are loaded ----------------
    // The level OpenSeadragon draws the view of ``img`` with (it loads up to 2 level pixels per
    // screen pixel), and the tiles of that level the view covers. Every image spans the
    // viewport's width 1, so this holds for an image of another size than the one on screen.
    function viewTiles(img) {
      const vp = viewer.viewport, container = vp.getContainerSize();
      if (!container.x) return null;
      const scale = (vp.getZoom(true) * container.x / img.width) * (window.devicePixelRatio || 1);
      const level = clamp(Math.floor(img.max_level + Math.log2(2 * scale) + 1e-9), img.min_level, img.max_level);
      const k = 2 ** (img.max_level - level);  // image pixels per level pixel
      const b = vp.getBounds(true);
      const t = (v, size) => Math.floor(clamp(v * img.width, 0, size - 1e-6) / k / img.tile);
      return { level, x0: t(b.x, img.width), y0: t(b.y, img.height),
               x1: t(b.x + b.width, img.width), y1: t(b.y + b.height, img.height) };
    }

    // During a run the server is told what the view shows, so the finished picture's tiles there
    // are rendered before the viewer asks (previews alone load coarser levels, see tileSource).
    let reported = '';
    function reportView() {
      const v = st.value, img = v && v.image;
      if (!img || !v.progress) return;
      const t = viewTiles(img);
      if (!t) return;
      const url = `view/${v.session}/${img.gen}?level=${t.level}&x0=${t.x0}&y0=${t.y0}&x1=${t.x1}&y1=${t.y1}`;
      if (url === reported) return;
      reported = url;
      fetch(url, { method: 'POST', credentials: 'same-origin', keepalive: true }).catch(() => {});
    }
    viewer.addHandler('animation-finish', reportView);

    // A new version loads hidden behind the one on screen (see showImage): only the level its view
    // is drawn from, none of the coarser levels OpenSeadragon otherwise loads on the way (nobody
    // sees them); they become available when it is revealed (reveal restores minLevel).
    function tileSource(img, session, hidden) {
      // a preview (of a run in progress) stops two levels short of the view's: a sixteenth of the tiles.
      // OpenSeadragon derives every level's size from maxLevel, so maxLevel stays the pyramid's and
      // the levels above a preview's finest one are marked as having no tiles (tileExists): a lower
      // maxLevel would make it ask for a full-size level's tiles at a level the server has few of.
      const view = viewTiles(img);
      const drawn = !view ? img.max_level : img.preview ? Math.max(img.min_level, view.level - 2) : view.level;
      const finest = img.preview ? drawn : img.max_level;
      const minLevel = hidden ? drawn : img.min_level;
      const loads = new Set();  // this image's tile downloads in flight
      let removed = false;
      return {
        width: img.width, height: img.height, tileSize: img.tile, tileOverlap: img.overlap,
        minLevel, maxLevel: img.max_level,
        tileExists(level, x, y) {
          const n = this.getNumTiles(level);
          return level >= this.minLevel && level <= finest && x >= 0 && y >= 0 && x < n.x && y < n.y;
        },
        getTileUrl: (level, x, y) => `tiles/${session}/${img.gen}/${level}/${x}_${y}.png`,
        downloadTileStart: (job) => (removed ? job.fail('[infd] image removed', null) : downloadTile(job, loads)),
        downloadTileAbort: (job) => job.userData.abort && job.userData.abort(),
        abortLoads: () => { removed = true; for (const job of [...loads]) job.abort(); },
      };
    }

    // An image taken off the canvas (a preview replaced, an old version) stops loading at once, so
    // its tiles never hold request slots (imageLoaderLimit) or the server's CPU ahead of the new image's:
    // the server drops their renders if they have not started.
    viewer.world.addHandler('remove-item', (e) => e.item.source.abortLoads && e.item.source.abortLoads());
    // The navigator's copy of a hidden new version would load the whole image at its view's level:
    // the navigator loads only what it shows.
    viewer.navigator.world.addHandler('add-item', (e) => e.item.setPreload(false));

    // A revealed image gets its coarser levels back, for zooming out, in the viewer and in the
    // navigator (whose copy shares the tile source); OpenSeadragon's lowest whole-image level
    // (savedCutOffLevel, set from minLevel when an image is added) is set again from it.
    function allLevels(item, img) {
      item.source.minLevel = img.min_level;
      const nav = viewer.navigator.world;
      for (let i = 0; i < nav.getItemCount(); i++) {
        const copy = nav.getItemAt(i);
        if (copy._originalForNavigator === item) copy.savedCutOffLevel = copy.source.getClosestLevel();
      }
      item.savedCutOffLevel = item.source.getClosestLevel();
    }

    // Tiles are fetched here instead of by OpenSeadragon's default loader so that a busy server's
    // 503 is retried after its Retry-After (at most TILE_RETRIES times) instead of leaving a hole.
    // ``loads`` holds the job until it is finished or failed (once: job.abort() fails it too).
    const TILE_RETRIES = 30;
    function downloadTile(job, loads) {
      const ctl = new AbortController();
      let timer = null;
      let tries = 0;
      loads.add(job);
      const stop = () => { loads.delete(job); ctl.abort(); clearTimeout(timer); };
      job.userData.abort = stop;
      // OpenSeadragon ends a job by itself too (its `timeout`): then the request is cancelled, and
      // its late answer must not call the job's callback a second time (that would count a
      // finished download twice in the image loader and let more requests run than it allows)
      const callback = job.callback;
      job.callback = (j) => { if (loads.has(job)) stop(); job.callback = () => {}; callback(j); };
      const settle = (how, ...args) => { if (loads.has(job)) job[how](...args); };
      const attempt = () => {
        fetch(job.src, { signal: ctl.signal, credentials: 'same-origin' }).then((r) => {
          if (r.status === 503 && tries++ < TILE_RETRIES) {
            const wait = Math.min(30, Math.max(0.2, parseFloat(r.headers.get('Retry-After')) || 1));
            timer = setTimeout(attempt, wait * 1000);
            return null;
          }
          if (!r.ok) return settle('fail', `[infd] tile answered ${r.status}`, null);
          return r.blob().then((blob) => (blob.size ? settle('finish', blob, null, 'rasterBlob')
            : settle('fail', '[infd] empty tile', null)));
        }).catch((err) => settle('fail', `[infd] tile failed: ${err}`, null));
      };
      attempt();
    }

    function showImage(v) {
      const img = v.image;
      const key = img ? `${v.session}/${img.gen}` : null;
      if (key === st.shownKey || (key && key === st.pendingKey)) return;
      if (st.pending) {                       // superseded before it finished loading
        viewer.world.removeItem(st.pending);
        st.pending = null;
      }
      st.pendingKey = key;
      if (!img) {                             // e.g. the first generation undone
        viewer.world.removeAll();
        st.shownKey = null;
        viewer.imageLoader.jobLimit = FEW_LOADS;
        return;
      }
      const first = viewer.world.getItemCount() === 0;
      viewer.imageLoader.jobLimit = first ? FEW_LOADS : ALL_LOADS;  // a hidden version: its whole view at once
      viewer.addTiledImage({
        tileSource: tileSource(img, v.session, !first),
        opacity: first ? 1 : 0,
        preload: true,                        // load although hidden (opacity 0)
        success: (e) => {
          const item = e.item;
          if (st.pendingKey !== key) { viewer.world.removeItem(item); return; }
          st.pending = item;
          const aspect = img.width / img.height;
          if (!first && st.aspect !== null && Math.abs(aspect - st.aspect) > 1e-9) {
            viewer.viewport.fitBounds(item.getBounds(), true);  // home would fit the old one too, still in the world
          }
          st.aspect = aspect;                   // e.g. an opened photo's shape: fit it, its tiles load for that view
          const reveal = () => {
            if (st.pending !== item) return;
            allLevels(item, img);
            item.setOpacity(1);
            for (let i = viewer.world.getItemCount() - 1; i >= 0; i--) {
              const other = viewer.world.getItemAt(i);
              if (other !== item) viewer.world.removeItem(other);
            }
            st.pending = null;
            st.pendingKey = null;
            st.shownKey = key;
            viewer.imageLoader.jobLimit = FEW_LOADS;
            renderBoxes();                    // the aspect may have changed
          };
          if (first) { viewer.viewport.goHome(true); reveal(); } else item.whenFullyLoaded(reveal);
          if (!img.preview) item.whenFullyLoaded(() => { if (st.shownKey === key) trigger('view_shown', { gen: img.gen }); });
        },
      });
    }

    // --- boxes ------------------------------------------------------------------------------
    function boxLabel(b, i) {
      const text = b.kind === 'text' ? (b.prompt || '(no prompt)') : b.kind;
      return `${i + 1}. ${text}`;
    }

    function renderBoxes() {
      const seen = new Set();
      st.boxes.forEach((b, i) => {
        seen.add(b.id);
        let el = st.overlays.get(b.id);
        if (!el) {
          el = document.createElement('div');
          el.innerHTML = '<span class="infd-label"></span>' +
            HANDLES.map((h) => `<i class="infd-handle infd-${h}"></i>`).join('');
          viewer.addOverlay({ element: el, location: boxRect(b) });
          st.overlays.set(b.id, el);
        } else {
          viewer.updateOverlay(el, boxRect(b));
        }
        el.className = `infd-box infd-kind-${b.kind}` + (b.id === st.selected ? ' infd-selected' : '');
        el.style.setProperty('--box-color', b.kind === 'color' && b.color
          ? `rgb(${b.color.map((c) => Math.round(c * 255)).join(',')})` : '');
        el.querySelector('.infd-label').textContent = boxLabel(b, i);
      });
      for (const [id, el] of st.overlays) {
        if (!seen.has(id)) { viewer.removeOverlay(el); st.overlays.delete(id); }
      }
    }

    // What is under a screen point: a handle of the selected box, else the topmost box body.
    function hitTest(pos) {
      const sel = st.boxes.find((b) => b.id === st.selected);
      if (sel) {
        const r = screenRect(sel);
        const xs = { w: r.x, e: r.x + r.width }, ys = { n: r.y, s: r.y + r.height };
        const mx = r.x + r.width / 2, my = r.y + r.height / 2;
        for (const h of HANDLES) {
          const hx = h.includes('w') ? xs.w : h.includes('e') ? xs.e : mx;
          const hy = h.includes('n') ? ys.n : h.includes('s') ? ys.s : my;
          if (Math.abs(pos.x - hx) <= HANDLE_PX && Math.abs(pos.y - hy) <= HANDLE_PX) return { box: sel, handle: h };
        }
      }
      for (let i = st.boxes.length - 1; i >= 0; i--) {
        const r = screenRect(st.boxes[i]);
        if (pos.x >= r.x && pos.x <= r.x + r.width && pos.y >= r.y && pos.y <= r.y + r.height) {
          return { box: st.boxes[i], handle: null };
        }
      }
      return null;
    }

    function select(id) {
      if (id === st.selected) return;
      st.selected = id;
      renderBoxes();
      trigger('box_select', { id });
    }

    function send(op) {
      st.localRev += 1;
      trigger('box_edit', Object.assign({ rev: st.localRev }, op));
    }

    function geometry(b) { return { id: b.id, x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1 }; }

    // The dragged box for the pointer at fraction p (draw: from the press point; move/resize: from the original).
    function dragged(d, p) {
      const o = d.orig, dx = p.x - d.start.x, dy = p.y - d.start.y;
      let x0 = o.x0, y0 = o.y0, x1 = o.x1, y1 = o.y1;
      if (d.mode === 'draw') {
        x0 = Math.min(d.start.x, p.x); x1 = Math.max(d.start.x, p.x);
        y0 = Math.min(d.start.y, p.y); y1 = Math.max(d.start.y, p.y);
      } else if (d.mode === 'move') {
        const mx = clamp(dx, -o.x0, 1 - o.x1), my = clamp(dy, -o.y0, 1 - o.y1);
        x0 += mx; x1 += mx; y0 += my; y1 += my;
      } else {
        if (d.handle.includes('w')) x0 = Math.min(o.x0 + dx, o.x1);
        if (d.handle.includes('e')) x1 = Math.max(o.x1 + dx, o.x0);
        if (d.handle.includes('n')) y0 = Math.min(o.y0 + dy, o.y1);
        if (d.handle.includes('s')) y1 = Math.max(o.y1 + dy, o.y0);
      }
      return Object.assign({}, d.box, { x0: clamp(x0, 0, 1), y0: clamp(y0, 0, 1), x1: clamp(x1, 0, 1), y1: clamp(y1, 0, 1) });
    }

    viewer.addHandler('canvas-press', (e) => {
      if (!st.value || !st.value.image) return;
      const hit = hitTest(e.position);
      const start = toFrac(e.position);
      if (hit && hit.handle) {
        st.drag = { mode: 'resize', handle: hit.handle, box: hit.box, orig: hit.box, start };
      } else if (st.drawMode || e.originalEvent.shiftKey) {
        const id = 'b' + Date.now().toString(36) + Math.floor(Math.random() * 1296).toString(36);
        const box = { id, x0: start.x, y0: start.y, x1: start.x, y1: start.y, kind: 'text', prompt: '', weight: 1 };
        st.drag = { mode: 'draw', box, orig: box, start };
      } else if (hit) {
        select(hit.box.id);
        st.drag = { mode: 'move', box: hit.box, orig: hit.box, start };
      }
    });

    viewer.addHandler('canvas-drag', (e) => {
      const d = st.drag;
      if (!d) return;                          // no box gesture: let the viewer pan
      e.preventDefaultAction = true;
      const b = dragged(d, toFrac(e.position));
      if (d.mode === 'draw' && !st.boxes.includes(d.box)) {
        st.boxes = st.boxes.concat([b]);
      } else {
        st.boxes = st.boxes.map((x) => (x.id === b.id ? b : x));
      }
      d.box = b;
      renderBoxes();
    });

    viewer.addHandler('canvas-drag-end', (e) => { if (st.drag) e.preventDefaultAction = true; });  // no flick

    viewer.addHandler('canvas-release', () => {
      const d = st.drag;
      st.drag = null;
      if (!d) return;
      const r = screenRect(d.box);
      const big = r.width >= MIN_BOX_PX && r.height >= MIN_BOX_PX;
      if (d.mode === 'draw') {
        if (!big) { st.boxes = st.boxes.filter((b) => b.id !== d.box.id); renderBoxes(); return; }
        st.selected = d.box.id;
        send({ op: 'add', box: geometry(d.box) });
        setDrawMode(false);
      } else if (d.box !== d.orig) {
        if (big) send({ op: 'update', box: geometry(d.box) });
        else { st.boxes = st.boxes.map((x) => (x.id === d.orig.id ? d.orig : x)); }  // collapsed: undo the resize
      }
      renderBoxes();
    });

    viewer.addHandler('canvas-click', (e) => {   // a quick click on empty canvas deselects
      if (e.quick && !hitTest(e.position)) select(null);
    });

    // Cursor feedback only (the gestures above are the viewer's own handlers).
    viewer.canvas.addEventListener('pointermove', (e) => {
      if (st.drag) return;
      const rect = viewer.canvas.getBoundingClientRect();
      const hit = hitTest(new OpenSeadragon.Point(e.clientX - rect.left, e.clientY - rect.top));
      viewer.canvas.style.cursor = (st.drawMode || e.shiftKey) ? 'crosshair'
        : hit && hit.handle ? CURSORS[hit.handle] : hit ? 'move' : '';
    });

    // --- toolbar, keyboard --------------------------------------------------------------------
    function setDrawMode(on) {
      st.drawMode = on;
      root.classList.toggle('infd-drawing', on);
    }

    function zoomOneToOne() {
      const item = viewer.world.getItemAt(viewer.world.getItemCount() - 1);
      if (item) viewer.viewport.zoomTo(item.imageToViewportZoom(1));
    }

    const actions = {
      undo: () => trigger('history', { action: 'undo' }),
      redo: () => trigger('history', { action: 'redo' }),
      draw: () => setDrawMode(!st.drawMode),
      one: zoomOneToOne,
      home: () => viewer.viewport.goHome(),
    };
    root.querySelectorAll('.infd-toolbar button').forEach((b) => {
      b.addEventListener('click', () => actions[b.dataset.action]());
    });

    function clickButton(id) {
      const b = document.getElementById(id);
      if (b && !b.disabled) b.click();
    }

    document.addEventListener('keydown', (e) => {
      if (!root.isConnected || isTyping(e.target)) return;
      const mod = e.ctrlKey || e.metaKey;
      const k = e.key.toLowerCase();
      let handled = true;
      if (mod && k === 'z') actions[e.shiftKey ? 'redo' : 'undo']();
      else if (mod && k === 'y') actions.redo();
      else if (mod || e.altKey) handled = false;
      else if ((k === 'delete' || k === 'backspace') && st.selected) {
        const id = st.selected;
        st.boxes = st.boxes.filter((b) => b.id !== id);
        st.selected = null;
        renderBoxes();
        send({ op: 'delete', id });
      } else if (k === 'b') actions.draw();
      else if (k === '1') zoomOneToOne();
      else if (k === '0') actions.home();
      else if (k === 'escape') { st.drag = null; setDrawMode(false); select(null); }
      else if (k === 'g') clickButton(e.shiftKey ? 'infd-guided' : 'infd-generate');
      else handled = false;
      if (handled) e.preventDefault();
    });

    // --- values from Python -------------------------------------------------------------------
    function renderProgress(p) {
      root.classList.toggle('infd-busy', !!p);
      if (!p) return;
      root.querySelector('.infd-bar').style.width = `${(100 * p.step) / Math.max(p.total, 1)}%`;
      root.querySelector('.infd-progress-text').textContent = `step ${p.step} / ${p.total}`;
    }

    function update(v) {
      if (!v) return;
      st.value = v;
      showImage(v);
      reportView();
      // Boxes: skip server copies that predate our own unacknowledged edits, and never mid-gesture.
      if (!st.drag && v.rev >= st.localRev) {
        st.boxes = v.boxes;
        st.selected = v.selected;
      }
      renderBoxes();
      renderProgress(v.progress);
      root.classList.toggle('infd-empty', !v.image);
    }

    watch('value', () => update(props.value));
    update(props.value);
    // The work lives in the server's session, which this page's key names: leaving or reloading the
    // page loses it (unless saved), so the browser asks first once there is a picture or a box.
    // A download (an export, a session file) starts by following a link, which fires the same event:
    // the page marks it (st.downloadAt) and is not left.
    window.addEventListener('beforeunload', (e) => {
      const v = st.value;
      if (Date.now() - (st.downloadAt || 0) < 3000) return;
      if (v && (v.image || (v.boxes && v.boxes.length))) { e.preventDefault(); e.returnValue = ''; }
    });
    window.infd = { viewer, state: st };  // for the browser tests and for debugging in the console
  }

  window.InfdViewer = { mount };
})();
