// The heat map as pixels: one pixel per (output token, source token) cell, coloured by strength. The page
// scales this image up with nearest-neighbour sampling, so a 1500 x 500 matrix costs one small image, not
// 750 000 DOM nodes; the PNG download draws the same pixels larger, with labels.
import { viridis, type RGB } from "./colors";
import { displayToken, isPossibleSource, tokenAt, type Attribution } from "./attribution";

/** Cells a token cannot depend on (itself and later tokens): a neutral dark grey, not part of the scale. */
export const IMPOSSIBLE_RGB: RGB = [30, 36, 52];

/** RGBA pixels, `columns.length` wide and `rows.length` high. */
export function heatmapPixels(
  att: Attribution,
  strengths: Float32Array,
  rows: number[],
  columns: number[],
  threshold: number,
): Uint8ClampedArray<ArrayBuffer> {
  const pixels = new Uint8ClampedArray(rows.length * columns.length * 4);
  let at = 0;
  for (const row of rows) {
    const base = row * att.width;
    for (const column of columns) {
      let rgb: RGB;
      if (!isPossibleSource(att, row, column)) rgb = IMPOSSIBLE_RGB;
      else {
        const strength = strengths[base + column];
        rgb = viridis(strength >= threshold ? strength : 0);
      }
      pixels[at] = rgb[0];
      pixels[at + 1] = rgb[1];
      pixels[at + 2] = rgb[2];
      pixels[at + 3] = 255;
      at += 4;
    }
  }
  return pixels;
}

/** Label every k-th row or column so that labels are at least `minSpacingPx` apart at `cellPx` per cell. */
export function labelStride(cellPx: number, minSpacingPx = 13): number {
  return Math.max(1, Math.ceil(minSpacingPx / Math.max(cellPx, 0.0001)));
}

export function shortLabel(att: Attribution, column: number, maxChars = 14): string {
  const text = displayToken(tokenAt(att, column));
  return text.length > maxChars ? `${text.slice(0, maxChars - 1)}…` : text;
}

export interface PngOptions {
  title: string;
  subtitle: string;
  threshold: number;
  valueLabel: string;
}

/** A PNG of the whole heat map with token labels, a title and a legend (the "Download PNG" file). */
export function renderHeatmapPng(
  att: Attribution,
  strengths: Float32Array,
  rows: number[],
  columns: number[],
  options: PngOptions,
): Promise<Blob> {
  const cell = Math.max(2, Math.min(18, Math.floor(3000 / Math.max(rows.length, columns.length, 1))));
  const stride = labelStride(cell, 12);
  const left = 150;
  const top = 150;
  const bottom = 70;
  const right = 30;
  const width = left + columns.length * cell + right;
  const height = top + rows.length * cell + bottom;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = Math.max(height, 260);
  const ctx = canvas.getContext("2d");
  if (!ctx) return Promise.reject(new Error("this browser can't draw on a canvas"));
  ctx.fillStyle = "#0b1020";
  ctx.fillRect(0, 0, canvas.width, canvas.height);

  const image = new ImageData(heatmapPixels(att, strengths, rows, columns, options.threshold), columns.length, rows.length);
  const source = document.createElement("canvas");
  source.width = Math.max(columns.length, 1);
  source.height = Math.max(rows.length, 1);
  source.getContext("2d")?.putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(source, left, top, columns.length * cell, rows.length * cell);

  ctx.fillStyle = "#e8ecf4";
  ctx.font = "600 18px system-ui, sans-serif";
  ctx.fillText(options.title, 16, 30);
  ctx.font = "13px system-ui, sans-serif";
  ctx.fillStyle = "#9aa4b8";
  ctx.fillText(options.subtitle, 16, 52);

  ctx.font = "11px ui-monospace, Menlo, Consolas, monospace";
  ctx.fillStyle = "#c9d1e0";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  rows.forEach((row, r) => {
    if (r % stride === 0) ctx.fillText(shortLabel(att, att.nIn + row, 18), left - 6, top + r * cell + cell / 2);
  });
  ctx.textAlign = "left";
  columns.forEach((column, c) => {
    if (c % stride !== 0) return;
    ctx.save();
    ctx.translate(left + c * cell + cell / 2, top - 6);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(shortLabel(att, column, 18), 0, 0);
    ctx.restore();
  });
  // The boundary between the prompt's tokens and the generated ones.
  const boundary = columns.findIndex((column) => column >= att.nIn);
  if (boundary > 0) {
    ctx.strokeStyle = "#f4f6fb";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left + boundary * cell + 0.5, top - 4);
    ctx.lineTo(left + boundary * cell + 0.5, top + rows.length * cell);
    ctx.stroke();
  }

  const legendTop = top + rows.length * cell + 24;
  const legendWidth = Math.min(260, Math.max(120, columns.length * cell));
  for (let x = 0; x < legendWidth; x++) {
    const [r, g, b] = viridis(x / (legendWidth - 1));
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect(left + x, legendTop, 1, 12);
  }
  ctx.fillStyle = "#9aa4b8";
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "top";
  ctx.fillText(`0`, left, legendTop + 16);
  ctx.textAlign = "right";
  ctx.fillText(`1  (${options.valueLabel})`, left + legendWidth, legendTop + 16);
  ctx.textAlign = "left";
  ctx.fillText("rows: output tokens · columns: sources (input, then output)", left + legendWidth + 20, legendTop);

  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the PNG could not be made"))), "image/png"),
  );
}

/** Save a blob under `fileName` through a temporary link. */
export function saveBlob(blob: Blob, fileName: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
