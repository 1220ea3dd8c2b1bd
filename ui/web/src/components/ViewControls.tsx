// The view options every result view shares: raw or normalized values, the threshold, template tokens.
import { useId } from "react";
import { viridisGradient } from "../lib/colors";
import { LEVELS, type ViewOptions } from "../lib/attribution";

export interface ViewControlsProps {
  options: ViewOptions;
  onChange: (options: ViewOptions) => void;
  /** How many tokens the toggle hides; -1 when it differs between the results shown. */
  templateCount: number;
  /**
   * The token / word / sentence toggle: enabled where the result carries word and sentence indices, disabled
   * where it doesn't (written before them), left out where the page doesn't regroup (undefined).
   */
  canGroup?: boolean;
}

const LEVEL_LABELS = { token: "Tokens", word: "Words", sentence: "Sentences" } as const;

export function ViewControls({ options, onChange, templateCount, canGroup }: ViewControlsProps) {
  const id = useId();
  const set = (patch: Partial<ViewOptions>) => onChange({ ...options, ...patch });
  return (
    <div className="controls" role="group" aria-label="View options">
      <fieldset className="segmented">
        <legend className="control-label">Values</legend>
        {(["normalized", "raw"] as const).map((mode) => (
          <label key={mode} className={options.mode === mode ? "on" : undefined}>
            <input
              type="radio"
              name={`${id}-mode`}
              value={mode}
              checked={options.mode === mode}
              onChange={() => set({ mode })}
            />
            {mode === "normalized" ? "Normalized" : "Raw"}
          </label>
        ))}
      </fieldset>
      {canGroup !== undefined && (
        <fieldset
          className="segmented"
          title={canGroup ? undefined : "This result has no word and sentence marks (written before TokenLens stored them)"}
        >
          <legend className="control-label">Units</legend>
          {LEVELS.map((level) => (
            <label key={level} className={options.level === level ? "on" : undefined}>
              <input
                type="radio"
                name={`${id}-level`}
                value={level}
                checked={options.level === level}
                disabled={!canGroup}
                onChange={() => set({ level })}
              />
              {LEVEL_LABELS[level]}
            </label>
          ))}
        </fieldset>
      )}
      <div className="control">
        <label className="control-label" htmlFor={`${id}-threshold`}>
          Threshold
        </label>
        <input
          id={`${id}-threshold`}
          type="range"
          min={0}
          max={1}
          step={0.01}
          value={options.threshold}
          onChange={(event) => set({ threshold: Number(event.target.value) })}
          aria-valuetext={`${Math.round(options.threshold * 100)}% of the strongest`}
        />
        <output className="control-value" htmlFor={`${id}-threshold`}>
          {options.threshold.toFixed(2)}
        </output>
      </div>
      <label className="control check">
        <input
          type="checkbox"
          checked={options.hideTemplate}
          onChange={(event) => set({ hideTemplate: event.target.checked })}
          disabled={templateCount === 0}
        />
        Hide template &amp; special tokens
        {templateCount >= 0 && <span className="muted">({templateCount})</span>}
      </label>
      <div className="legend" aria-label="Colour scale: dark purple is weak, yellow is strongest">
        <span className="muted">weak</span>
        <span className="legend-bar" style={{ background: viridisGradient() }} />
        <span className="muted">strongest</span>
      </div>
    </div>
  );
}
