#version 330 core
// Pass 1: one instance per cell, a rectangle covering the cell's W'xH' tile of the field
// (tiles laid out like the picture's grid). Everything per cell comes from the instance's
// attributes, written by the CPU (a few floats per cell) when the cells or the time change.
in vec2 in_pos;     // corner of the unit square
in vec2 in_cell;    // the cell's tile origin in the field, texels
in vec4 in_org01;   // origins of the cell's taps 0 and 1 in the map atlas (x0, y0, x1, y1)
in vec4 in_org23;   // taps 2 and 3
in vec4 in_lo;      // each tap's range at the current time: lo
in vec4 in_scale;   // and 1 / (hi - lo)
uniform vec2 u_tile;    // W', H'
uniform vec2 u_target;  // size of the field, texels
flat out vec2 v_cell;
flat out vec4 v_org01;
flat out vec4 v_org23;
flat out vec4 v_lo;
flat out vec4 v_scale;
void main() {
    v_cell = in_cell;
    v_org01 = in_org01;
    v_org23 = in_org23;
    v_lo = in_lo;
    v_scale = in_scale;
    gl_Position = vec4((in_cell + in_pos * u_tile) / u_target * 2.0 - 1.0, 0.0, 1.0);
}
