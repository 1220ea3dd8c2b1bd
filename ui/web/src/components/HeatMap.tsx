// The association matrix as a zoomable, scrollable heat map on a canvas. Only the visible part is drawn, from
// a one-pixel-per-cell image, so it stays quick at 500+ tokens; token labels stay pinned to the edges while
// scrolling; the tooltip names both tokens and the value; clicking a cell (or a row label) pins that output token.
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type MouseEvent } from "react";
import {
  cellValue,
  displayToken,
  formatValue,
  isPossibleSource,
  tokenAt,
  type Attribution,
  type ValueMode,
} from "../lib/attribution";
import { heatmapPixels, labelStride, shortLabel } from "../lib/heatmap";

const GUTTER_LEFT = 124;
const GUTTER_TOP = 92;
/** Room on the right for the last column's slanted label. */
const GUTTER_RIGHT = 40;
const MAX_HEIGHT_PX = 560;
const MIN_CELL_PX = 1;
/** The largest cell "fit" picks; zooming in may go further, to MAX_CELL_PX. */
const MAX_FIT_CELL_PX = 36;
const MAX_CELL_PX = 64;
/** In "fit", rows are made at least this tall when the box has room, so short matrices stay readable. */
const MIN_FIT_ROW_PX = 14;
const ZOOM_STEP = 1.5;
const BACKGROUND = "#0f1629";

export interface HeatMapProps {
  att: Attribution;
  strengths: Float32Array;
  rows: number[];
  columns: number[];
  threshold: number;
  mode: ValueMode;
  activeRow: number | null;
  onPinRow: (row: number) => void;
  /** What a row and a column stand for ("tokens", "words", "sentences"). */
  unit?: string;
}

interface Hover {
  r: number;
  c: number;
  x: number;
  y: number;
}

const clamp = (value: number, low: number, high: number) => Math.min(Math.max(value, low), high);

export function HeatMap({
  att,
  strengths,
  rows,
  columns,
  threshold,
  mode,
  activeRow,
  onPinRow,
  unit = "tokens",
}: HeatMapProps) {
  const scrollRef = useRef<HTMLDivElement>(null);
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const imageRef = useRef<HTMLCanvasElement | null>(null);
  const frameRef = useRef(0);
  const anchorRef = useRef<{ left: number; top: number } | null>(null);
  const [viewport, setViewport] = useState({ width: 900, height: 400 });
  /** Zoom relative to "fit" (1). */
  const [scale, setScale] = useState(1);
  const [hover, setHover] = useState<Hover | null>(null);

  // "Fit": the columns fill the width (never under a pixel: thinner would drop columns), and rows fill the
  // box's height up to MIN_FIT_ROW_PX, so cells need not be square.
  const fitW = clamp(
    (viewport.width - GUTTER_LEFT - GUTTER_RIGHT) / Math.max(columns.length, 1),
    MIN_CELL_PX,
    MAX_FIT_CELL_PX,
  );
  const roomH = (MAX_HEIGHT_PX - GUTTER_TOP - 18) / Math.max(rows.length, 1);
  const fitH = clamp(Math.max(fitW, Math.min(MIN_FIT_ROW_PX, roomH)), MIN_CELL_PX, MAX_FIT_CELL_PX);
  const cellW = clamp(fitW * scale, MIN_CELL_PX, MAX_CELL_PX);
  const cellH = clamp(fitH * scale, MIN_CELL_PX, MAX_CELL_PX);
  const contentWidth = GUTTER_LEFT + columns.length * cellW + GUTTER_RIGHT;
  const contentHeight = GUTTER_TOP + rows.length * cellH;
  const boxHeight = Math.min(contentHeight + 18, MAX_HEIGHT_PX);

  // The one-pixel-per-cell image, rebuilt only when what it shows changes.
  const pixels = useMemo(
    () => heatmapPixels(att, strengths, rows, columns, threshold),
    [att, strengths, rows, columns, threshold],
  );
  useEffect(() => {
    if (!columns.length || !rows.length) return;
    const image = document.createElement("canvas");
    image.width = columns.length;
    image.height = rows.length;
    const ctx = image.getContext("2d");
    if (!ctx) return;
    ctx.putImageData(new ImageData(new Uint8ClampedArray(pixels), columns.length, rows.length), 0, 0);
    imageRef.current = image;
  }, [pixels, columns.length, rows.length]);

  useLayoutEffect(() => {
    const box = scrollRef.current;
    if (!box) return;
    const measure = () => setViewport({ width: box.clientWidth || 900, height: box.clientHeight || 400 });
    measure();
    if (typeof ResizeObserver === "undefined") {
      window.addEventListener("resize", measure);
      return () => window.removeEventListener("resize", measure);
    }
    const observer = new ResizeObserver(measure);
    observer.observe(box);
    return () => observer.disconnect();
  }, []);

  const activeIndex = activeRow === null ? -1 : rows.indexOf(activeRow);
  const boundary = columns.findIndex((column) => column >= att.nIn);

  const draw = useCallback(() => {
    const canvas = canvasRef.current;
    const box = scrollRef.current;
    const ctx = canvas?.getContext("2d");
    if (!canvas || !box || !ctx) return;
    const width = box.clientWidth;
    const height = box.clientHeight;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, width, height);
    const left = box.scrollLeft;
    const top = box.scrollTop;
    const originX = GUTTER_LEFT - left;
    const originY = GUTTER_TOP - top;
    const firstCol = Math.max(0, Math.floor(left / cellW));
    const lastCol = Math.min(columns.length, Math.ceil((left + width - GUTTER_LEFT) / cellW));
    const firstRow = Math.max(0, Math.floor(top / cellH));
    const lastRow = Math.min(rows.length, Math.ceil((top + height - GUTTER_TOP) / cellH));

    // Cells.
    ctx.save();
    ctx.beginPath();
    ctx.rect(GUTTER_LEFT, GUTTER_TOP, width - GUTTER_LEFT, height - GUTTER_TOP);
    ctx.clip();
    if (imageRef.current) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(imageRef.current, originX, originY, columns.length * cellW, rows.length * cellH);
    }
    ctx.strokeStyle = "rgba(11, 16, 32, 0.55)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    if (cellW >= 9) {
      for (let c = firstCol; c <= lastCol; c++) {
        ctx.moveTo(Math.round(originX + c * cellW) + 0.5, originY + firstRow * cellH);
        ctx.lineTo(Math.round(originX + c * cellW) + 0.5, originY + lastRow * cellH);
      }
    }
    if (cellH >= 9) {
      for (let r = firstRow; r <= lastRow; r++) {
        ctx.moveTo(originX + firstCol * cellW, Math.round(originY + r * cellH) + 0.5);
        ctx.lineTo(originX + lastCol * cellW, Math.round(originY + r * cellH) + 0.5);
      }
    }
    ctx.stroke();
    if (boundary > 0) {
      ctx.strokeStyle = "rgba(244, 246, 251, 0.85)";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(originX + boundary * cellW, originY);
      ctx.lineTo(originX + boundary * cellW, originY + rows.length * cellH);
      ctx.stroke();
    }
    if (activeIndex >= 0) {
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.strokeRect(originX - 1, originY + activeIndex * cellH - 1, columns.length * cellW + 2, cellH + 2);
    }
    if (hover) {
      ctx.strokeStyle = "#ff4fd8";
      ctx.lineWidth = 2;
      ctx.strokeRect(originX + hover.c * cellW - 1, originY + hover.r * cellH - 1, cellW + 2, cellH + 2);
    }
    ctx.restore();

    // Labels, pinned to the left and top edges.
    ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace";
    ctx.textBaseline = "middle";
    ctx.save();
    ctx.beginPath();
    // A few pixels above the cells, so the first row's label is not cut in half.
    ctx.rect(0, GUTTER_TOP - 7, GUTTER_LEFT, height - GUTTER_TOP + 7);
    ctx.clip();
    ctx.textAlign = "right";
    const rowStride = labelStride(cellH, 13);
    for (let r = firstRow - (firstRow % rowStride); r < lastRow; r += rowStride) {
      const row = rows[r];
      ctx.fillStyle = r === activeIndex ? "#ffffff" : "#aab4c8";
      ctx.fillText(`${shortLabel(att, att.nIn + row, 12)} ${row}`, GUTTER_LEFT - 6, originY + r * cellH + cellH / 2);
    }
    if (activeIndex >= 0 && activeIndex % rowStride !== 0) {
      // The active row is always labelled, whatever the stride.
      ctx.fillStyle = "#0f1629";
      ctx.fillRect(0, originY + activeIndex * cellH + cellH / 2 - 7, GUTTER_LEFT - 2, 14);
      ctx.fillStyle = "#ffffff";
      const label = `${shortLabel(att, att.nIn + rows[activeIndex], 12)} ${rows[activeIndex]}`;
      ctx.fillText(label, GUTTER_LEFT - 6, originY + activeIndex * cellH + cellH / 2);
    }
    ctx.restore();
    ctx.save();
    ctx.beginPath();
    ctx.rect(GUTTER_LEFT, 0, width - GUTTER_LEFT, GUTTER_TOP);
    ctx.clip();
    ctx.textAlign = "left";
    const colStride = labelStride(cellW, 16);
    for (let c = firstCol - (firstCol % colStride); c < lastCol; c += colStride) {
      const column = columns[c];
      ctx.save();
      ctx.translate(originX + c * cellW + cellW / 2, GUTTER_TOP - 6);
      ctx.rotate(-Math.PI / 3);
      ctx.fillStyle = column < att.nIn ? "#aab4c8" : "#7fd4c1";
      ctx.fillText(shortLabel(att, column, 12), 0, 0);
      ctx.restore();
    }
    ctx.restore();
    ctx.fillStyle = "#6f7a90";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.fillText("sources →", 8, GUTTER_TOP - 30);
    ctx.fillText("↓ output", 8, GUTTER_TOP - 14);
  }, [att, cellW, cellH, columns, rows, activeIndex, boundary, hover]);

  // Redraw after every render that changes what is shown, and on scroll (once per frame).
  useEffect(() => {
    const anchor = anchorRef.current;
    const box = scrollRef.current;
    if (anchor && box) {
      box.scrollLeft = anchor.left;
      box.scrollTop = anchor.top;
      anchorRef.current = null;
    }
    draw();
  }, [draw, pixels, viewport]);

  const onScroll = () => {
    cancelAnimationFrame(frameRef.current);
    frameRef.current = requestAnimationFrame(draw);
  };

  const maxScale = MAX_CELL_PX / Math.min(fitW, fitH);
  const minScale = Math.min(1, MIN_CELL_PX / Math.max(fitW, fitH));
  const zoomTo = useCallback(
    (nextScale: number, focusX?: number, focusY?: number) => {
      const box = scrollRef.current;
      const target = clamp(nextScale, minScale, maxScale);
      if (box && target !== scale) {
        // Keep the cell under the pointer (or the view's centre) where it is.
        const fx = focusX ?? (box.clientWidth + GUTTER_LEFT) / 2;
        const fy = focusY ?? (box.clientHeight + GUTTER_TOP) / 2;
        const ratioW = clamp(fitW * target, MIN_CELL_PX, MAX_CELL_PX) / cellW;
        const ratioH = clamp(fitH * target, MIN_CELL_PX, MAX_CELL_PX) / cellH;
        anchorRef.current = {
          left: Math.max(0, (box.scrollLeft + fx - GUTTER_LEFT) * ratioW - (fx - GUTTER_LEFT)),
          top: Math.max(0, (box.scrollTop + fy - GUTTER_TOP) * ratioH - (fy - GUTTER_TOP)),
        };
      }
      setScale(target);
    },
    [scale, minScale, maxScale, fitW, fitH, cellW, cellH],
  );

  useEffect(() => {
    const box = scrollRef.current;
    if (!box) return;
    const onWheel = (event: WheelEvent) => {
      if (!event.ctrlKey && !event.metaKey) return;
      event.preventDefault();
      const rect = box.getBoundingClientRect();
      zoomTo(event.deltaY < 0 ? scale * 1.2 : scale / 1.2, event.clientX - rect.left, event.clientY - rect.top);
    };
    box.addEventListener("wheel", onWheel, { passive: false });
    return () => box.removeEventListener("wheel", onWheel);
  }, [scale, zoomTo]);

  const cellAt = (event: MouseEvent<HTMLCanvasElement>): Hover | null => {
    const box = scrollRef.current;
    if (!box) return null;
    const rect = event.currentTarget.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const r = Math.floor((y - GUTTER_TOP + box.scrollTop) / cellH);
    if (y < GUTTER_TOP) return null;
    if (x < GUTTER_LEFT) return r >= 0 && r < rows.length ? { r, c: -1, x, y } : null;
    const c = Math.floor((x - GUTTER_LEFT + box.scrollLeft) / cellW);
    if (r < 0 || r >= rows.length || c < 0 || c >= columns.length) return null;
    return { r, c, x, y };
  };

  const onMove = (event: MouseEvent<HTMLCanvasElement>) => {
    const at = cellAt(event);
    setHover(at && at.c >= 0 ? at : null);
    event.currentTarget.style.cursor = at ? "pointer" : "default";
  };

  const onClick = (event: MouseEvent<HTMLCanvasElement>) => {
    const at = cellAt(event);
    if (at) onPinRow(rows[at.r]);
  };

  const tooltip = hover ? describeCell(att, rows[hover.r], columns[hover.c], mode, strengths) : null;

  return (
    <div className="heatmap">
      <div className="heatmap-toolbar">
        <span className="muted">
          {rows.length} output × {columns.length} source {unit} · zoom {Math.round(scale * 100)}% · Ctrl + wheel zooms,
          hover a cell for its value
        </span>
        <div className="button-group" role="group" aria-label="Zoom">
          <button type="button" onClick={() => zoomTo(scale / ZOOM_STEP)} aria-label="Zoom out" disabled={scale <= minScale}>
            −
          </button>
          <button type="button" onClick={() => setScale(1)} aria-pressed={scale === 1}>
            Fit
          </button>
          <button type="button" onClick={() => zoomTo(scale * ZOOM_STEP)} aria-label="Zoom in" disabled={scale >= maxScale}>
            +
          </button>
        </div>
      </div>
      <div className="heatmap-frame">
        <div
          ref={scrollRef}
          className="heatmap-scroll"
          style={{ height: boxHeight }}
          onScroll={onScroll}
          tabIndex={0}
          aria-label="Heat map of the association matrix; scroll to move, Ctrl+wheel to zoom"
        >
          <div style={{ width: contentWidth, height: contentHeight, position: "relative" }}>
            <canvas
              ref={canvasRef}
              className="heatmap-canvas"
              data-testid="heatmap-canvas"
              onMouseMove={onMove}
              onMouseLeave={() => setHover(null)}
              onClick={onClick}
            />
          </div>
        </div>
        {hover && tooltip && (
          <div
            className="heatmap-tooltip"
            role="tooltip"
            data-testid="heatmap-tooltip"
            style={{
              left: Math.max(0, Math.min(hover.x + 16, viewport.width - 300)),
              top: hover.y + 18 > boxHeight - 70 ? hover.y - 78 : hover.y + 18,
            }}
          >
            {tooltip}
          </div>
        )}
      </div>
    </div>
  );
}

function describeCell(att: Attribution, row: number, column: number, mode: ValueMode, strengths: Float32Array) {
  const source = tokenAt(att, column);
  const kind = column < att.nIn ? "input" : "output";
  const position = column < att.nIn ? column : column - att.nIn;
  const possible = isPossibleSource(att, row, column);
  return (
    <>
      <div className="tooltip-tokens">
        <span className="tok tok-inline">{displayToken(att.outputTokens[row])}</span>
        <span className="muted"> output #{row} ← </span>
        <span className="tok tok-inline">{displayToken(source)}</span>
        <span className="muted">
          {" "}
          {kind} #{position}
        </span>
      </div>
      {possible ? (
        <div className="tooltip-values">
          {mode} <strong>{formatValue(cellValue(att, row, column, mode))}</strong>
          <span className="muted">
            {" "}
            · {mode === "raw" ? "normalized" : "raw"} {formatValue(cellValue(att, row, column, mode === "raw" ? "normalized" : "raw"))}
            {" "}· strength {strengths[row * att.width + column].toFixed(2)}
          </span>
        </div>
      ) : (
        <div className="tooltip-values muted">not a source: a token depends only on earlier tokens</div>
      )}
    </>
  );
}
