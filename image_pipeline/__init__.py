"""Export VM disks, convert with qemu-img, build containerDisk images, push, publish."""
