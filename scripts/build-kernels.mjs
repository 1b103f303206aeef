#!/usr/bin/env node
// Placeholder until the CUDA backend lands: compiles nothing.
console.log('build:kernels: no kernels yet');
