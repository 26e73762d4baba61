#!/usr/bin/env node
// Runs the TypeScript entry through tsx (the project has no build step).
import { register } from 'tsx/esm/api'
register()
await import('../src/daemon/main.ts')
