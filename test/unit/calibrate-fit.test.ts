// The least-squares fit that splits the testbed's load into a per-request factor and one for the rest
// (scripts/calibrate.ts --from-testbed given a first boot and a --vmt-profile wave).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { leastSquares } from '../../scripts/calibrate.js'

test('leastSquares recovers the factors of waves made from them, in any units', () => {
  // measured = 0.67 x requests' quiet CPU + 3.74 x the rest's, as in four 1 Gb/s waves of 2026-11-30
  const waves = [[2_900, 3_400], [520, 3_300], [2_600, 3_450], [460, 3_200]]
  const k = leastSquares(waves, waves.map(([r, d]) => 0.67 * r + 3.74 * d))
  assert.ok(k !== undefined)
  assert.ok(Math.abs(k[0] - 0.67) < 1e-9 && Math.abs(k[1] - 3.74) < 1e-9, String(k))
  // the same in seconds instead of ms: the same factors
  const s = leastSquares(waves.map(w => w.map(x => x / 1000)), waves.map(([r, d]) => (0.67 * r + 3.74 * d) / 1000))
  assert.ok(s !== undefined && Math.abs(s[0] - 0.67) < 1e-9 && Math.abs(s[1] - 3.74) < 1e-9)
  // noise: the best fit, not an exact one (residuals sum to ~0 against each column)
  const noisy = leastSquares(waves, [19_070, 17_210, 19_110, 14_150])
  assert.ok(noisy !== undefined && noisy.every(x => x > 0))
})

test('leastSquares refuses waves that cannot tell the terms apart', () => {
  // the same share of requests in every wave: the columns are proportional
  assert.equal(leastSquares([[1_000, 3_000], [2_000, 6_000]], [10, 20]), undefined)
  // fewer waves than terms
  assert.equal(leastSquares([[1, 2]], [3]), undefined)
  // a term that is zero in every wave
  assert.equal(leastSquares([[0, 2], [0, 3]], [4, 6]), undefined)
})
