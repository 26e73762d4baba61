// A short run of the crash trials (scripts/crash-trials.ts; `npm run crash-trials` runs 200 or more): kill -9
// at random moments of each kind of work, then nothing recorded is wrong or lost.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { runCrashTrials } from '../../scripts/crash-trials.js'

test('5 kill -9 trials, one of each kind of work: no failure, nothing lost', { timeout: 600_000 }, async () => {
  const report = await runCrashTrials({ trials: 5, seed: 12, imageMiB: 2 })
  assert.equal(report.trials, 5, report.failureLog.join('\n'))
  assert.deepEqual(report.failureLog, [], report.failureLog.join('\n'))
  assert.equal(report.failures, 0)
  for (const [scenario, counts] of Object.entries(report.byScenario)) assert.equal(counts.trials, 1, scenario)
  assert.ok(Object.values(report.lost).every(n => n === 0), JSON.stringify(report.lost))
  // The trials did reach stored data: blocks were present when the kills came.
  assert.ok(report.presentBlocksChecked > 0)
})
